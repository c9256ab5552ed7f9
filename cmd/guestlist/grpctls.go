package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// The TLS of the gRPC channel between edges and the ConfigService (and of the API's gRPC
// listener): the server side loads a certificate and key from files and picks up renewed ones; the
// edge trusts the CA certificates of a file. An edge refuses to send its token and take every
// tenant's configuration in plaintext over the network unless the operator says so
// (--config-plaintext).

// keyPairFiles serves a certificate and key read from two PEM files. It reads them again when
// either file changes (a renewed certificate takes effect at the next handshake without a
// restart); when the new files do not load, it keeps serving the last pair that did and logs why.
type keyPairFiles struct {
	certPath, keyPath string
	logger            *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     [2]fileStamp // of certPath and keyPath when cert was read
	lastCheck time.Time
	warned    string // the last failure logged ("" while the files are the pair serving)
}

// fileStamp is what tells a changed file: its modification time and size.
type fileStamp struct {
	mod  time.Time
	size int64
}

// keyPairCheckInterval is how often, at most, the files are looked at again.
const keyPairCheckInterval = time.Second

// loadKeyPairFiles reads the certificate chain (PEM, leaf first) and its private key (PEM) and
// returns a keyPairFiles serving them. The error names the file and says what is wrong.
func loadKeyPairFiles(certPath, keyPath string) (*keyPairFiles, error) {
	k := &keyPairFiles{certPath: certPath, keyPath: keyPath, logger: slog.Default()}
	stamp, err := k.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := loadKeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	k.cert, k.stamp, k.lastCheck = cert, stamp, time.Now()
	return k, nil
}

// loadKeyPair reads and checks one certificate and key pair.
func loadKeyPair(certPath, keyPath string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("certificate %s and key %s: %w", certPath, keyPath, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		return nil, fmt.Errorf("certificate %s: no certificate", certPath)
	}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return nil, fmt.Errorf("certificate %s expired at %s", certPath, leaf.NotAfter.UTC().Format(time.RFC3339))
	case len(leaf.ExtKeyUsage) > 0 && !hasExtKeyUsage(leaf, x509.ExtKeyUsageServerAuth):
		return nil, fmt.Errorf("certificate %s is not for server authentication (its extended key usage lacks serverAuth)", certPath)
	}
	return &cert, nil
}

func hasExtKeyUsage(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

func (k *keyPairFiles) stamps() ([2]fileStamp, error) {
	var s [2]fileStamp
	for i, p := range []string{k.certPath, k.keyPath} {
		fi, err := os.Stat(p)
		if err != nil {
			return s, fmt.Errorf("TLS file: %w", err)
		}
		s[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	return s, nil
}

// GetCertificate returns the current pair, first reading the files again if they changed. It
// never fails once the first pair loaded.
func (k *keyPairFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.lastCheck) < keyPairCheckInterval {
		return k.cert, nil
	}
	k.lastCheck = time.Now()
	stamp, err := k.stamps()
	if err == nil && stamp == k.stamp {
		return k.cert, nil
	}
	var cert *tls.Certificate
	if err == nil {
		cert, err = loadKeyPair(k.certPath, k.keyPath)
	}
	if err != nil {
		// A renewal may write the two files one after the other: the pair may match at the next
		// look. Until then the last good pair serves; each new failure is logged once. A pair
		// that failed is read again at every look, not only once its files' stamps change: what
		// made it fail (the files' owner or mode, say) may be fixed without writing them.
		if msg := err.Error(); msg != k.warned {
			k.warned = msg
			k.logger.Warn("gRPC TLS: the changed certificate or key does not load; serving the pair loaded before", "error", err)
		}
		return k.cert, nil
	}
	k.cert, k.stamp, k.warned = cert, stamp, ""
	k.logger.Info("gRPC TLS: loaded a renewed certificate", "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return k.cert, nil
}

// serverTLS is the gRPC listener's TLS configuration: TLS 1.2 or later, the certificate from k,
// whose reloads are logged to logger. A nil k (no TLS flags) gives nil: plaintext.
func (k *keyPairFiles) serverTLS(logger *slog.Logger) *tls.Config {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	k.logger = logger
	k.mu.Unlock()
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: k.GetCertificate}
}

// grpcTLSFlags are --grpc-tls-cert and --grpc-tls-key of the roles that serve gRPC.
type grpcTLSFlags struct{ cert, key *string }

func addGRPCTLSFlags(fs *flag.FlagSet, what string) grpcTLSFlags {
	return grpcTLSFlags{
		cert: fs.String("grpc-tls-cert", "", "serve "+what+" over TLS only, with this certificate chain (PEM, leaf first; read again when it changes); with --grpc-tls-key (default: plaintext)"),
		key:  fs.String("grpc-tls-key", "", "the private key (PEM) of --grpc-tls-cert"),
	}
}

// load returns the key pair the flags name, nil when neither is set.
func (f grpcTLSFlags) load() (*keyPairFiles, error) {
	switch {
	case *f.cert == "" && *f.key == "":
		return nil, nil
	case *f.cert == "":
		return nil, errors.New("--grpc-tls-key needs --grpc-tls-cert")
	case *f.key == "":
		return nil, errors.New("--grpc-tls-cert needs --grpc-tls-key")
	}
	k, err := loadKeyPairFiles(*f.cert, *f.key)
	if err != nil {
		return nil, fmt.Errorf("--grpc-tls-cert, --grpc-tls-key: %w", err)
	}
	return k, nil
}

// loadRoots reads the CA certificates (PEM) an edge trusts for the ConfigService.
func loadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// isLoopbackHost reports whether host (of a host:port) is a loopback address or "localhost":
// traffic to it never leaves the machine.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// configTLSFromFlags resolves an edge's --config-ca, --config-server-name and --config-plaintext
// for the ConfigService addresses: the TLS client configuration, or nil for plaintext. Plaintext
// to an address that is not loopback needs --config-plaintext, so that no edge sends its token
// and takes its configuration unprotected across a network by default.
func configTLSFromFlags(addrs []string, caFile, serverName string, plaintext bool) (*tls.Config, error) {
	switch {
	case caFile != "" && plaintext:
		return nil, errors.New("--config-ca and --config-plaintext exclude each other")
	case serverName != "" && caFile == "":
		return nil, errors.New("--config-server-name needs --config-ca")
	case caFile != "":
		roots, err := loadRoots(caFile)
		if err != nil {
			return nil, fmt.Errorf("--config-ca: %w", err)
		}
		return &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}, nil
	case plaintext:
		return nil, nil
	}
	for _, addr := range addrs {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || !isLoopbackHost(host) {
			return nil, fmt.Errorf("--config-addr %s is not a loopback address: give --config-ca (the CA of the ConfigService's certificate) to connect over TLS, or --config-plaintext to send the edge token and receive every tenant's configuration unprotected", addr)
		}
	}
	return nil, nil
}
