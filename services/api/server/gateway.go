package server

import (
	"context"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// gatewayListener is the in-memory listener on which the gRPC server serves the REST gateway's
// client. The gateway never reaches the gRPC server over the network: its calls need no TLS even
// when the gRPC listener requires it, and they do not depend on which interface that listener is
// bound to.
type gatewayListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

var _ net.Listener = (*gatewayListener)(nil)

func newGatewayListener() *gatewayListener {
	return &gatewayListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// gatewayConn is the server's end of a gateway connection. Its type, which only dial makes, is
// what gatewayCreds goes by: no connection from the network can be one.
type gatewayConn struct{ net.Conn }

// LocalAddr and RemoteAddr are gatewayAddr (net.Pipe's own are "pipe"), so that the peer of a
// gateway call (in the access log and the spans) says that it came through the REST gateway.
func (gatewayConn) LocalAddr() net.Addr  { return gatewayAddr{} }
func (gatewayConn) RemoteAddr() net.Addr { return gatewayAddr{} }

// gatewayAddr is the address of both ends of a gateway connection.
type gatewayAddr struct{}

func (gatewayAddr) Network() string { return "memory" }
func (gatewayAddr) String() string  { return "rest-gateway" }

// Accept returns the next gateway connection, or net.ErrClosed once the listener is closed.
func (l *gatewayListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; connections already accepted stay open.
func (l *gatewayListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr is the listener's (in-memory) address.
func (l *gatewayListener) Addr() net.Addr { return gatewayAddr{} }

// dial connects to the listener; it fails once the listener is closed or ctx is done.
func (l *gatewayListener) dial(ctx context.Context, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- gatewayConn{server}:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	_ = client.Close()
	_ = server.Close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("server: the gRPC server no longer accepts gateway connections")
}

// gatewayCreds are the gRPC server's transport credentials when its listener serves TLS: TLS for
// every connection but the gateway's in-memory ones, which are plaintext.
type gatewayCreds struct {
	tls credentials.TransportCredentials
}

var _ credentials.TransportCredentials = gatewayCreds{}

// ServerHandshake runs the TLS handshake on conn, unless conn is a gateway connection.
func (c gatewayCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := conn.(gatewayConn); ok {
		return insecure.NewCredentials().ServerHandshake(conn)
	}
	return c.tls.ServerHandshake(conn)
}

// ClientHandshake is not used: these credentials are a server's.
func (c gatewayCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server: gatewayCreds are server credentials")
}

// Info is the TLS credentials' protocol information.
func (c gatewayCreds) Info() credentials.ProtocolInfo { return c.tls.Info() }

// Clone returns a copy of c.
func (c gatewayCreds) Clone() credentials.TransportCredentials {
	return gatewayCreds{tls: c.tls.Clone()}
}

// OverrideServerName is deprecated in grpc-go and does nothing here.
func (c gatewayCreds) OverrideServerName(string) error { return nil }
