package decision

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
)

// The RSA keys [CheckCAKey] accepts: MinCARSABits to MaxCARSABits bits, public exponent
// CARSAExponent.
const (
	MinCARSABits  = 2048
	MaxCARSABits  = 4096
	CARSAExponent = 65537
)

// acceptedCAKeys ends every refusal of CheckCAKey.
const acceptedCAKeys = "a CA's key must be RSA of 2048 to 4096 bits with public exponent 65537, ECDSA on P-256 or P-384, or Ed25519"

// CheckCAKey returns nil when the public key of the CA certificate cert is one the edge accepts
// for a hostname's CA, and otherwise an error saying what the key is and what is accepted. It is
// the one rule for CA keys: the control plane refuses an upload of any other (services/trust),
// and [Prepare] refuses a configuration that holds one.
//
// Accepted: RSA of [MinCARSABits] to [MaxCARSABits] bits with public exponent [CARSAExponent];
// ECDSA on P-256 or P-384; Ed25519. The edge checks a CA's key against the signature of every
// certificate that names the CA as its issuer, whoever sent it and without knowing the key of
// anyone, so what a check costs is the key's to decide: an RSA check grows with the exponent's
// bits times the square of the modulus' (16 CAs of one name with 262,144-bit moduli and exponent
// 2^31-1, which fit the upload limit, cost an independent review's edge 1 to 4 s of CPU for each
// handshake of a client sending a junk signature), and a P-521 check costs about 40 times a P-256
// one. P-224, RSA below 2048 bits and other exponents are refused as weak or unusual; any other
// algorithm is not one the edge verifies with.
func CheckCAKey(cert *x509.Certificate) error {
	if cert == nil {
		return errors.New("no certificate")
	}
	switch k := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		if bits < MinCARSABits || bits > MaxCARSABits {
			return fmt.Errorf("the CA's key is RSA of %d bits; %s", bits, acceptedCAKeys)
		}
		if k.E != CARSAExponent {
			return fmt.Errorf("the CA's key is RSA with public exponent %d; %s", k.E, acceptedCAKeys)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		case elliptic.P521():
			return fmt.Errorf("the CA's key is ECDSA on P-521, which is refused because checking a P-521 signature costs the edge about 40 times as much as a P-256 one; %s", acceptedCAKeys)
		}
		name := "an unknown curve"
		if k.Curve != nil && k.Curve.Params() != nil {
			name = k.Curve.Params().Name
		}
		return fmt.Errorf("the CA's key is ECDSA on %s; %s", name, acceptedCAKeys)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("the CA's key is an Ed25519 key of %d bytes, not %d; %s", len(k), ed25519.PublicKeySize, acceptedCAKeys)
		}
		return nil
	}
	return fmt.Errorf("the CA's key is of algorithm %s, which the edge does not verify with; %s", cert.PublicKeyAlgorithm, acceptedCAKeys)
}
