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
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// ErrNotAllowed is what a refused connection's error wraps.
var ErrNotAllowed = errors.New("egress: address not allowed")

// special lists the address blocks that are not public unicast (IANA's special-purpose address
// registries, RFC 6890 and its updates), and public addresses that only reach a cloud platform's
// own services, each with the name an error gives it. IPv4-mapped IPv6 addresses are checked as
// the IPv4 address they map, and NAT64 addresses (64:ff9b::/96) as the IPv4 address they embed;
// IPv6 addresses outside 2000::/3 (global unicast) are not public either.
var special = []struct {
	prefix netip.Prefix
	name   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("168.63.129.16/32"), "cloud platform endpoint (Azure)"},
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

// Policy says which addresses connections may go to: public unicast addresses, and those its
// entries allow. A nil *Policy, like the zero Policy, allows public addresses only. A Policy is
// immutable and safe for concurrent use.
type Policy struct {
	allow []Entry
	deny  []Entry // checked first: refused even where allow or public
}

// Entry is what a Policy allows besides public addresses: the addresses of Prefix, on Port (0:
// any port).
type Entry struct {
	Prefix netip.Prefix
	Port   uint16
}

// String returns the entry as Parse reads it: "10.0.0.0/8", "10.1.2.3/32:8081",
// "[fd00::/8]:443".
func (e Entry) String() string {
	switch {
	case e.Port == 0:
		return e.Prefix.String()
	case e.Prefix.Addr().Is4():
		return e.Prefix.String() + ":" + strconv.Itoa(int(e.Port))
	default:
		return "[" + e.Prefix.String() + "]:" + strconv.Itoa(int(e.Port))
	}
}

func (e Entry) allows(ap netip.AddrPort) bool {
	return (e.Port == 0 || e.Port == ap.Port()) && e.Prefix.Contains(ap.Addr())
}

// Allow returns a Policy that also allows the given entries. IPv4-mapped IPv6 prefixes
// (::ffff:a.b.c.d/n, n >= 96) are taken as the IPv4 prefix they map.
func Allow(entries ...Entry) *Policy {
	p := &Policy{allow: make([]Entry, 0, len(entries))}
	for _, e := range entries {
		if a := e.Prefix.Addr(); a.Is4In6() && e.Prefix.Bits() >= 96 {
			e.Prefix = netip.PrefixFrom(a.Unmap(), e.Prefix.Bits()-96)
		}
		e.Prefix = e.Prefix.Masked()
		p.allow = append(p.allow, e)
	}
	return p
}

// Loopback allows the loopback addresses (127.0.0.0/8 and ::1), on any port, besides public ones:
// for a single-machine setup whose origins run on the same host, and for tests.
func Loopback() *Policy {
	return Allow(Entry{Prefix: netip.MustParsePrefix("127.0.0.0/8")}, Entry{Prefix: netip.MustParsePrefix("::1/128")})
}

// Parse parses a comma-separated list of entries to allow besides public addresses
// (ParseEntries) into a Policy.
func Parse(list string) (*Policy, error) {
	entries, err := ParseEntries(list)
	if err != nil {
		return nil, err
	}
	return Allow(entries...), nil
}

// ParseEntries parses a comma-separated list of entries. An entry is an IP prefix or a single
// address, optionally with a port: "10.0.0.0/8", "10.1.2.3", "10.1.2.3:8081", "10.0.0.0/8:443",
// "fd00::/8", "::1", "[::1]:8081", "[fd00::/8]:443". Space around an entry is ignored; an empty
// list has no entries. An entry that is none of these, or that has a zone, is an error naming the
// entry.
func ParseEntries(list string) ([]Entry, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var entries []Entry
	for i, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return nil, fmt.Errorf("egress: entry %d is empty", i+1)
		}
		e, err := parseEntry(raw)
		if err != nil {
			return nil, fmt.Errorf("egress: entry %d, %q: %w", i+1, raw, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// WithDeny returns a copy of p that also refuses the given entries, before anything else: a
// public address (the edges' own, whose origin would loop back to them; a platform's service) or
// one inside an allowed prefix. IPv4-mapped prefixes are taken as in Allow.
func (p *Policy) WithDeny(entries ...Entry) *Policy {
	q := Allow()
	if p != nil {
		q.allow = slices.Clone(p.allow)
		q.deny = slices.Clone(p.deny)
	}
	q.deny = append(q.deny, Allow(entries...).allow...)
	return q
}

// parseEntry parses one entry of Parse.
func parseEntry(raw string) (Entry, error) {
	const want = "not an IP address or prefix with an optional port (like 10.1.2.3, 10.0.0.0/8, 10.1.2.3:8081 or [fd00::/8]:443)"
	host, port := raw, ""
	switch {
	case strings.HasPrefix(raw, "["):
		end := strings.Index(raw, "]")
		if end < 0 || !strings.HasPrefix(raw[end+1:], ":") {
			return Entry{}, errors.New(want)
		}
		host, port = raw[1:end], raw[end+2:]
	case strings.Count(raw, ":") == 1: // IPv4 with a port (IPv6 has at least two colons)
		host, port, _ = strings.Cut(raw, ":")
	}
	var e Entry
	if strings.Contains(host, "/") {
		pre, err := netip.ParsePrefix(host)
		if err != nil {
			return Entry{}, errors.New(want)
		}
		e.Prefix = pre
	} else {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return Entry{}, errors.New(want)
		}
		if a.Zone() != "" {
			return Entry{}, errors.New("an address with a zone cannot be allowed")
		}
		e.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if port != "" || strings.HasPrefix(raw, "[") {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Entry{}, fmt.Errorf("port %q is not a number from 1 to 65535", port)
		}
		e.Port = uint16(n)
	}
	return e, nil
}

// Entries returns what the policy allows besides public addresses.
func (p *Policy) Entries() []Entry {
	if p == nil {
		return nil
	}
	return slices.Clone(p.allow)
}

// Denied returns what the policy refuses before anything else (WithDeny).
func (p *Policy) Denied() []Entry {
	if p == nil {
		return nil
	}
	return slices.Clone(p.deny)
}

// String returns the allowed entries as Parse reads them ("" when there are none).
func (p *Policy) String() string {
	if p == nil {
		return ""
	}
	return joinEntries(p.allow)
}

// joinEntries returns entries as ParseEntries reads them.
func joinEntries(entries []Entry) string {
	s := make([]string, len(entries))
	for i, e := range entries {
		s[i] = e.String()
	}
	return strings.Join(s, ",")
}

// nat64 is the well-known NAT64 prefix (RFC 6052), whose addresses embed an IPv4 address.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// embedded4 returns the IPv4 address in the last 32 bits of a NAT64 address.
func embedded4(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom4([4]byte(b[12:]))
}

// global6 is IPv6's global unicast block; addresses outside it are not public.
var global6 = netip.MustParsePrefix("2000::/3")

// Check returns nil if a connection to ap may be made, and otherwise an error wrapping
// ErrNotAllowed that names the address and the block it is in.
func (p *Policy) Check(ap netip.AddrPort) error {
	a := ap.Addr().Unmap().WithZone("") // a zone does not make a link-local address public
	if !a.IsValid() {
		return fmt.Errorf("%w: not an IP address", ErrNotAllowed)
	}
	ap = netip.AddrPortFrom(a, ap.Port())
	if p != nil {
		deny := []netip.AddrPort{ap}
		if nat64.Contains(a) { // denied also when an entry allows the NAT64 form
			deny = append(deny, netip.AddrPortFrom(embedded4(a), ap.Port()))
		}
		for _, d := range deny {
			for _, e := range p.deny {
				if e.allows(d) {
					return fmt.Errorf("%w: %s is denied (%s)", ErrNotAllowed, d, e)
				}
			}
		}
		for _, e := range p.allow {
			if e.allows(ap) {
				return nil
			}
		}
	}
	if nat64.Contains(a) {
		// A NAT64 gateway connects to the IPv4 address the last 32 bits carry.
		if err := p.Check(netip.AddrPortFrom(embedded4(a), ap.Port())); err != nil {
			return fmt.Errorf("%w (NAT64 of %s)", err, a)
		}
		return nil
	}
	for _, s := range special {
		if s.prefix.Contains(a) {
			return fmt.Errorf("%w: %s is in %s (%s), and no allowed entry includes it", ErrNotAllowed, a, s.prefix, s.name)
		}
	}
	if a.Is6() && !global6.Contains(a) {
		return fmt.Errorf("%w: %s is outside IPv6's global unicast block %s, and no allowed entry includes it", ErrNotAllowed, a, global6)
	}
	if ap.Port() == 0 {
		return fmt.Errorf("%w: port 0", ErrNotAllowed)
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
	return p.Check(ap)
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
