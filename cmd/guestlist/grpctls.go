package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// The TLS of the gRPC channel between edges and the ConfigService (and of the API's gRPC
// listener), and of every role's HTTP listener (--http-tls-cert: the REST gateway, /readyz,
// /metrics): the server side loads a certificate and key from files and picks up renewed ones; the
// edge trusts the CA certificates of a file. An edge refuses to send its token and take every
// tenant's configuration in plaintext over the network unless the operator says so
// (--config-plaintext).

// keyPairFiles serves a certificate and key read from two PEM files. It reads them again when
// either file changes (a renewed certificate takes effect at the next handshake without a
// restart); when the new files do not load, it keeps serving the last pair that did and logs why.
type keyPairFiles struct {
	certPath, keyPath string
	logger            *slog.Logger
	// listener names what serves the pair in the logs ("gRPC", "HTTP"); "" for none.
	listener string

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
	case now.Before(leaf.NotBefore):
		// Clients would refuse it. A renewal written ahead of time is taken once it is valid
		// (keyPairFiles reads a pair that failed again at each check).
		return nil, fmt.Errorf("certificate %s is not valid until %s", certPath, leaf.NotBefore.UTC().Format(time.RFC3339))
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
			k.logger.Warn(k.logPrefix()+"the changed certificate or key does not load; serving the pair loaded before", "error", err)
		}
		return k.cert, nil
	}
	k.cert, k.stamp, k.warned = cert, stamp, ""
	k.logger.Info(k.logPrefix()+"loaded a renewed certificate", "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return k.cert, nil
}

// logPrefix starts k's log messages: "gRPC TLS: ", "HTTP TLS: ", or "TLS: ".
func (k *keyPairFiles) logPrefix() string {
	if k.listener == "" {
		return "TLS: "
	}
	return k.listener + " TLS: "
}

// serverTLS is a listener's TLS configuration (the gRPC listener's, or the HTTP listener's): TLS
// 1.2 or later, the certificate from k, whose reloads are logged to logger. A nil k (no TLS flags)
// gives nil: plaintext.
func (k *keyPairFiles) serverTLS(logger *slog.Logger) *tls.Config {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	k.logger = logger
	k.mu.Unlock()
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: k.GetCertificate}
}

// keyPairFlags are a listener's --PREFIX-tls-cert and --PREFIX-tls-key: --grpc-tls-cert and
// --grpc-tls-key of the roles that serve gRPC, --http-tls-cert and --http-tls-key of every role's
// HTTP listener.
type keyPairFlags struct {
	prefix   string // "grpc" or "http": the flags' names start with it
	listener string // what serves the pair, in its logs: "gRPC" or "HTTP"
	cert     *string
	key      *string
}

// addGRPCTLSFlags defines --grpc-tls-cert and --grpc-tls-key on fs; what names what the gRPC
// listener serves.
func addGRPCTLSFlags(fs *flag.FlagSet, what string) keyPairFlags {
	return addKeyPairFlags(fs, "grpc", "gRPC", "serve "+what+" over TLS only", "")
}

// addHTTPTLSFlags defines --http-tls-cert and --http-tls-key on fs, for the HTTP listener
// (--http-addr).
func addHTTPTLSFlags(fs *flag.FlagSet) keyPairFlags {
	// Not "bearer token": the deployment check takes flags whose text says so for secrets.
	return addKeyPairFlags(fs, "http", "HTTP", "serve everything on --http-addr over HTTPS only (TLS 1.2 or later)", ", so that the tokens in its requests' Authorization headers never cross the network in plaintext")
}

// addKeyPairFlags defines --PREFIX-tls-cert and --PREFIX-tls-key on fs; the certificate flag's text
// is serve, what the certificate is, why (may be empty), and the default.
func addKeyPairFlags(fs *flag.FlagSet, prefix, listener, serve, why string) keyPairFlags {
	return keyPairFlags{
		prefix:   prefix,
		listener: listener,
		cert:     fs.String(prefix+"-tls-cert", "", serve+", with this certificate chain (PEM, leaf first; read again when it changes)"+why+"; with --"+prefix+"-tls-key (default: plaintext)"),
		key:      fs.String(prefix+"-tls-key", "", "the private key (PEM) of --"+prefix+"-tls-cert"),
	}
}

// load returns the key pair the flags name, nil when neither is set. The error names the flags
// and, when a file does not load, the file and what is wrong with it.
func (f keyPairFlags) load() (*keyPairFiles, error) {
	certFlag, keyFlag := "--"+f.prefix+"-tls-cert", "--"+f.prefix+"-tls-key"
	switch {
	case *f.cert == "" && *f.key == "":
		return nil, nil
	case *f.cert == "":
		return nil, fmt.Errorf("%s needs %s", keyFlag, certFlag)
	case *f.key == "":
		return nil, fmt.Errorf("%s needs %s", certFlag, keyFlag)
	}
	k, err := loadKeyPairFiles(*f.cert, *f.key)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", certFlag, keyFlag, err)
	}
	k.listener = f.listener
	return k, nil
}

// loadRoots reads the CA certificates (PEM) of a file that a client trusts: an edge's for the
// ConfigService (--config-ca), "guestlist healthcheck --ca", "guestlist audit --api-ca". The
// error names the file and says what is wrong.
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
	// netip, unlike net.ParseIP, reads an address with a zone (::1%lo).
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && ip.IsLoopback()
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
