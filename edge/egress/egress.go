// Package egress decides which network addresses the edge may connect to when it forwards a
// request to a hostname's origin.
//
// A hostname's origin URL is chosen by its tenant. Unchecked, it could name an address inside the
// operator's network (the event store's HTTP API, the control plane, an edge's own metrics port,
// a cloud metadata service at 169.254.169.254) and any client of the hostname would reach it
// through the edge. So the edge connects only to public unicast addresses, and to the prefixes
// the operator allows (Parse). The check applies to the address each connection is actually made
// to (Policy.Control, a net.Dialer's ControlContext, which runs after name resolution), so an
// origin name that resolves to a public address today and to an internal one tomorrow (DNS
// rebinding) is refused too.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// ErrNotAllowed is what a refused connection's error wraps.
var ErrNotAllowed = errors.New("egress: address not allowed")

// special lists the address blocks that are not public unicast (IANA's special-purpose address
// registries, RFC 6890 and its updates), each with the name an error gives it. IPv4-mapped IPv6
// addresses are checked as the IPv4 address they map.
var special = []struct {
	prefix netip.Prefix
	name   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
	{netip.MustParsePrefix("3fff::/20"), "documentation"},
	{netip.MustParsePrefix("5f00::/16"), "segment routing"},
	{netip.MustParsePrefix("fc00::/7"), "unique local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// Policy says which addresses connections may go to: public unicast addresses, and those in the
// prefixes it allows. A nil *Policy, like the zero Policy, allows public addresses only. A
// Policy is immutable and safe for concurrent use.
type Policy struct {
	allow []netip.Prefix
}

// Allow returns a Policy that also allows the given prefixes. IPv4-mapped IPv6 prefixes
// (::ffff:a.b.c.d/n, n >= 96) are taken as the IPv4 prefix they map.
func Allow(prefixes ...netip.Prefix) *Policy {
	p := &Policy{allow: make([]netip.Prefix, 0, len(prefixes))}
	for _, pre := range prefixes {
		if a := pre.Addr(); a.Is4In6() && pre.Bits() >= 96 {
			pre = netip.PrefixFrom(a.Unmap(), pre.Bits()-96)
		}
		p.allow = append(p.allow, pre.Masked())
	}
	return p
}

// Loopback allows the loopback addresses (127.0.0.0/8 and ::1) besides public ones: for a
// single-machine setup whose origins run on the same host, and for tests.
func Loopback() *Policy {
	return Allow(netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
}

// Parse parses a comma-separated list of IP prefixes ("10.0.0.0/8", "fd00::/8") and single
// addresses ("10.1.2.3", "::1") to allow besides public addresses. Space around an entry is
// ignored; an empty list allows public addresses only. An entry that is neither a prefix nor an
// address, or that has a zone, is an error naming the entry.
func Parse(list string) (*Policy, error) {
	var prefixes []netip.Prefix
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			if strings.TrimSpace(list) == "" {
				break
			}
			return nil, fmt.Errorf("egress: entry %d is empty", i+1)
		}
		var pre netip.Prefix
		if strings.Contains(entry, "/") {
			p, err := netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("egress: entry %d, %q: not an IP prefix (like 10.0.0.0/8 or fd00::/8)", i+1, entry)
			}
			pre = p
		} else {
			a, err := netip.ParseAddr(entry)
			if err != nil {
				return nil, fmt.Errorf("egress: entry %d, %q: not an IP address or prefix (like 10.1.2.3 or 10.0.0.0/8)", i+1, entry)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("egress: entry %d, %q: an address with a zone cannot be allowed", i+1, entry)
			}
			pre = netip.PrefixFrom(a, a.BitLen())
		}
		prefixes = append(prefixes, pre)
	}
	return Allow(prefixes...), nil
}

// String returns the allowed prefixes as Parse reads them ("" when none are).
func (p *Policy) String() string {
	if p == nil {
		return ""
	}
	s := make([]string, len(p.allow))
	for i, pre := range p.allow {
		s[i] = pre.String()
	}
	return strings.Join(s, ",")
}

// Check returns nil if a connection to a may be made, and otherwise an error wrapping
// ErrNotAllowed that names the address and the block it is in.
func (p *Policy) Check(a netip.Addr) error {
	a = a.Unmap().WithZone("") // a zone does not make a link-local address public
	if !a.IsValid() {
		return fmt.Errorf("%w: not an IP address", ErrNotAllowed)
	}
	if p != nil {
		for _, pre := range p.allow {
			if pre.Contains(a) {
				return nil
			}
		}
	}
	for _, s := range special {
		if s.prefix.Contains(a) {
			return fmt.Errorf("%w: %s is in %s (%s), and no allowed prefix includes it", ErrNotAllowed, a, s.prefix, s.name)
		}
	}
	return nil
}

// CheckAddress is Check for a "host:port" address whose host is a literal IP, as a net.Dialer
// passes it to its Control functions. Anything else is not allowed.
func (p *Policy) CheckAddress(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address and port", ErrNotAllowed, address)
	}
	return p.Check(ap.Addr())
}

// Control refuses connections the policy does not allow; it has the signature of
// net.Dialer.ControlContext, which calls it for every address a dial tries, after name
// resolution and before the connection is made. Only TCP and UDP are allowed.
func (p *Policy) Control(_ context.Context, network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return fmt.Errorf("%w: network %q", ErrNotAllowed, network)
	}
	return p.CheckAddress(address)
}
