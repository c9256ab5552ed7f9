package server

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// gatewayListener is the in-memory listener on which the gRPC server serves the REST gateway's
// client. The gateway never reaches the gRPC server over the network: its calls need no TLS even
// when the gRPC listener requires it, and they do not depend on which interface that listener is
// bound to. Its connections are buffered (gatewayBufferSize each way), as a TCP connection's
// socket buffers are, so that neither end of the HTTP/2 connection waits for the other to read
// before it can write a frame.
type gatewayListener struct{ lis *bufconn.Listener }

var _ net.Listener = (*gatewayListener)(nil)

// gatewayBufferSize is the buffer of a gateway connection in each direction.
const gatewayBufferSize = 1 << 20

func newGatewayListener() *gatewayListener {
	return &gatewayListener{lis: bufconn.Listen(gatewayBufferSize)}
}

// gatewayConn is the server's end of a gateway connection. Its type, which only Accept makes, is
// what gatewayCreds goes by: no connection from the network can be one.
type gatewayConn struct{ net.Conn }

// LocalAddr and RemoteAddr are gatewayAddr, so that the peer of a gateway call (in the access log
// and the spans) says that it came through the REST gateway.
func (gatewayConn) LocalAddr() net.Addr  { return gatewayAddr{} }
func (gatewayConn) RemoteAddr() net.Addr { return gatewayAddr{} }

// gatewayAddr is the address of both ends of a gateway connection.
type gatewayAddr struct{}

func (gatewayAddr) Network() string { return "memory" }
func (gatewayAddr) String() string  { return "rest-gateway" }

// Accept returns the next gateway connection, or an error once the listener is closed.
func (l *gatewayListener) Accept() (net.Conn, error) {
	c, err := l.lis.Accept()
	if err != nil {
		return nil, err
	}
	return gatewayConn{c}, nil
}

// Close stops Accept and dial; connections already made stay open.
func (l *gatewayListener) Close() error { return l.lis.Close() }

// Addr is the listener's (in-memory) address.
func (l *gatewayListener) Addr() net.Addr { return gatewayAddr{} }

// dial connects to the listener; it fails once the listener is closed or ctx is done.
func (l *gatewayListener) dial(ctx context.Context, _ string) (net.Conn, error) {
	c, err := l.lis.DialContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("server: connect the REST gateway to the gRPC server: %w", err)
	}
	return c, nil
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
