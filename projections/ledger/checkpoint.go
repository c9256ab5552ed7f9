package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Checkpoint is the state of a tenant's log at a size: what a signed checkpoint commits to.
type Checkpoint struct {
	// Tenant is the tenant's id.
	Tenant string
	// Size is the number of events covered (revisions 0..Size-1).
	Size uint64
	// Root is the RFC 6962 Merkle root over the first Size events' canonical bytes.
	Root []byte
	// Chain is the hash chain value after revision Size-1.
	Chain [32]byte
	// Time is when the checkpoint was made (UTC).
	Time time.Time
}

// SignedCheckpoint is a checkpoint in its signed text form, in the style of a transparency-dev
// checkpoint note. The body is, each line ending in "\n":
//
//	guestlist/<tenant>          the origin
//	<size>                      decimal
//	<root>                      standard base64 of the 32-byte Merkle root
//	chain <hex>                 the hash chain value after revision size-1, lower-case hex
//	time <RFC 3339 nano, UTC>   when the checkpoint was made
//
// then an empty line, then one signature line "— guestlist <base64(key id || signature)>\n" where
// the key id is the first 4 bytes of SHA-256("guestlist" || "\n" || 0x01 || public key) and the
// signature is Ed25519 over the body bytes (everything before the empty line, including the last
// "\n").
type SignedCheckpoint string

// Errors of checkpoint verification. Test with errors.Is.
var (
	// ErrBadCheckpoint is returned for a checkpoint text that does not parse.
	ErrBadCheckpoint = errors.New("ledger: malformed checkpoint")
	// ErrBadSignature is returned for a checkpoint whose signature does not verify with the key.
	ErrBadSignature = errors.New("ledger: checkpoint signature invalid")
)

// keyName is the signer name of checkpoint signature lines.
const keyName = "guestlist"

// originPrefix starts the origin line.
const originPrefix = "guestlist/"

// Body returns the checkpoint's body text, the signed bytes.
func (c Checkpoint) Body() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%s\n%d\n%s\nchain %s\ntime %s\n", originPrefix, c.Tenant, c.Size,
		base64.StdEncoding.EncodeToString(c.Root), hex.EncodeToString(c.Chain[:]), c.Time.UTC().Format(time.RFC3339Nano))
	return b.Bytes()
}

// Signer signs checkpoints with an Ed25519 key.
type Signer struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
}

// NewSigner returns a Signer using priv.
func NewSigner(priv ed25519.PrivateKey) *Signer {
	return &Signer{priv: priv, pub: priv.Public().(ed25519.PublicKey)}
}

// Key file names in the directory given to LoadOrCreateKey.
const (
	// PrivateKeyFile holds the private key, PKCS #8 PEM ("PRIVATE KEY"), mode 0600.
	PrivateKeyFile = "checkpoint.key"
	// PublicKeyFile holds the public key, PKIX PEM ("PUBLIC KEY").
	PublicKeyFile = "checkpoint.pub"
)

// LoadOrCreateKey returns a Signer with the key in dir (PrivateKeyFile), creating the directory, a
// new key pair and both files if there is no key yet.
func LoadOrCreateKey(dir string) (*Signer, error) {
	keyPath := filepath.Join(dir, PrivateKeyFile)
	b, err := os.ReadFile(keyPath)
	switch {
	case err == nil:
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("ledger: %s: no PRIVATE KEY PEM block", keyPath)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ledger: %s: %w", keyPath, err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("ledger: %s: not an Ed25519 key (%T)", keyPath, k)
		}
		s := NewSigner(priv)
		pubPath := filepath.Join(dir, PublicKeyFile)
		if _, err := os.Stat(pubPath); errors.Is(err, os.ErrNotExist) {
			if err := writeFileAtomic(pubPath, []byte(s.PublicKeyPEM()), 0o644); err != nil {
				return nil, err
			}
		}
		return s, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("ledger: read checkpoint key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ledger: create key directory: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ledger: generate checkpoint key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("ledger: encode checkpoint key: %w", err)
	}
	// The key is written to a file of its own and linked into place: a link fails if the name
	// exists, so when several processes share an empty directory and start together, exactly
	// one key is created and the others load it.
	tmp, err := writeTemp(dir, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	if err != nil {
		return nil, err
	}
	err = os.Link(tmp, keyPath)
	_ = os.Remove(tmp)
	switch {
	case errors.Is(err, os.ErrExist):
		return LoadOrCreateKey(dir) // another process created it first: use that one
	case err != nil:
		return nil, fmt.Errorf("ledger: write %s: %w", keyPath, err)
	}
	s := NewSigner(priv)
	if err := writeFileAtomic(filepath.Join(dir, PublicKeyFile), []byte(s.PublicKeyPEM()), 0o644); err != nil {
		return nil, err
	}
	return s, nil
}

// writeTemp writes data, synced, to a new file of mode in dir and returns its name.
func writeTemp(dir string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("ledger: create a file in %s: %w", dir, err)
	}
	name := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("ledger: write %s: %w", name, err)
	}
	return name, nil
}

// writeFileAtomic replaces path with data (mode): written to a file of its own, then renamed, so
// readers see the old or the new content, and concurrent writers do not collide.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(filepath.Dir(path), data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("ledger: write %s: %w", path, err)
	}
	return nil
}

// PublicKey returns the public key that verifies the signer's checkpoints.
func (s *Signer) PublicKey() ed25519.PublicKey { return s.pub }

// PublicKeyPEM returns the public key, PKIX PEM ("PUBLIC KEY").
func (s *Signer) PublicKeyPEM() string {
	der, err := x509.MarshalPKIXPublicKey(s.pub)
	if err != nil {
		panic(fmt.Sprintf("ledger: marshal Ed25519 public key: %v", err)) // cannot happen for Ed25519
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// ParsePublicKeyPEM parses a PKIX PEM Ed25519 public key, as PublicKeyPEM writes it.
func ParsePublicKeyPEM(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("ledger: no PUBLIC KEY PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ledger: parse public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("ledger: public key is %T, not Ed25519", k)
	}
	return pub, nil
}

// keyID returns the 4-byte key id of pub.
func keyID(pub ed25519.PublicKey) []byte {
	h := sha256.New()
	h.Write([]byte(keyName + "\n"))
	h.Write([]byte{1})
	h.Write(pub)
	return h.Sum(nil)[:4]
}

// Sign returns cp signed.
func (s *Signer) Sign(cp Checkpoint) SignedCheckpoint {
	body := cp.Body()
	sig := ed25519.Sign(s.priv, body)
	return SignedCheckpoint(string(body) + "\n— " + keyName + " " + base64.StdEncoding.EncodeToString(append(keyID(s.pub), sig...)) + "\n")
}

// VerifyCheckpoint parses signed and checks its signature with pub. It returns ErrBadCheckpoint
// (wrapped) for a text that does not parse and ErrBadSignature when no signature line of pub
// verifies.
func VerifyCheckpoint(pub ed25519.PublicKey, signed SignedCheckpoint) (Checkpoint, error) {
	s := string(signed)
	i := strings.Index(s, "\n\n")
	if i < 0 {
		return Checkpoint{}, fmt.Errorf("%w: no signature block", ErrBadCheckpoint)
	}
	body, sigs := s[:i+1], s[i+2:]
	cp, err := parseBody(body)
	if err != nil {
		return Checkpoint{}, err
	}
	id := keyID(pub)
	var others []string // the key ids of signature lines by other keys
	ours := false       // a signature line carries pub's key id
	for _, line := range strings.Split(strings.TrimSuffix(sigs, "\n"), "\n") {
		rest, ok := strings.CutPrefix(line, "— "+keyName+" ")
		if !ok {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil || len(raw) != 4+ed25519.SignatureSize {
			continue
		}
		if !bytes.Equal(raw[:4], id) {
			others = append(others, hex.EncodeToString(raw[:4]))
			continue
		}
		ours = true
		if ed25519.Verify(pub, []byte(body), raw[4:]) {
			return cp, nil
		}
	}
	if !ours && len(others) > 0 {
		// Most likely the wrong public key rather than a forgery: say so, with both key ids.
		return Checkpoint{}, fmt.Errorf("%w: %s at size %d: it is signed by key id %s, not by the public key given (key id %s): "+
			"is that the key of the installation that made it (GET /v1/checkpointKey)?",
			ErrBadSignature, cp.Tenant, cp.Size, strings.Join(others, ", "), hex.EncodeToString(id))
	}
	return Checkpoint{}, fmt.Errorf("%w: %s at size %d", ErrBadSignature, cp.Tenant, cp.Size)
}

// ParseCheckpoint parses signed without verifying its signature.
func ParseCheckpoint(signed SignedCheckpoint) (Checkpoint, error) {
	s := string(signed)
	i := strings.Index(s, "\n\n")
	if i < 0 {
		return Checkpoint{}, fmt.Errorf("%w: no signature block", ErrBadCheckpoint)
	}
	return parseBody(s[:i+1])
}

func parseBody(body string) (Checkpoint, error) {
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if len(lines) != 5 {
		return Checkpoint{}, fmt.Errorf("%w: %d body lines, want 5", ErrBadCheckpoint, len(lines))
	}
	var cp Checkpoint
	var ok bool
	if cp.Tenant, ok = strings.CutPrefix(lines[0], originPrefix); !ok || cp.Tenant == "" {
		return Checkpoint{}, fmt.Errorf("%w: origin %q", ErrBadCheckpoint, lines[0])
	}
	var err error
	if cp.Size, err = strconv.ParseUint(lines[1], 10, 64); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: size: %v", ErrBadCheckpoint, err)
	}
	if cp.Root, err = base64.StdEncoding.DecodeString(lines[2]); err != nil || len(cp.Root) != 32 {
		return Checkpoint{}, fmt.Errorf("%w: root %q", ErrBadCheckpoint, lines[2])
	}
	ch, ok := strings.CutPrefix(lines[3], "chain ")
	if !ok {
		return Checkpoint{}, fmt.Errorf("%w: chain line %q", ErrBadCheckpoint, lines[3])
	}
	if b, err := hex.DecodeString(ch); err != nil || len(b) != 32 {
		return Checkpoint{}, fmt.Errorf("%w: chain %q", ErrBadCheckpoint, ch)
	} else {
		copy(cp.Chain[:], b)
	}
	ts, ok := strings.CutPrefix(lines[4], "time ")
	if !ok {
		return Checkpoint{}, fmt.Errorf("%w: time line %q", ErrBadCheckpoint, lines[4])
	}
	if cp.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: time: %v", ErrBadCheckpoint, err)
	}
	cp.Time = cp.Time.UTC()
	if !bytes.Equal(cp.Body(), []byte(body)) {
		return Checkpoint{}, fmt.Errorf("%w: body is not in canonical form", ErrBadCheckpoint)
	}
	return cp, nil
}
