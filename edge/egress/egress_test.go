package egress_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/egress"
)

func TestCheck(t *testing.T) {
	corp, err := egress.Parse("10.20.0.0/16, fd00:1::/32,192.168.1.7, 192.168.2.9:8081, [fd00:2::/64]:443")
	if err != nil {
		t.Fatal(err)
	}
	deny, err := egress.ParseEntries("127.0.0.1:8080, 93.184.215.14, 10.20.9.0/24")
	if err != nil {
		t.Fatal(err)
	}
	denying := egress.Loopback().WithDeny(deny...)
	corpDenying := corp.WithDeny(deny...)
	tests := []struct {
		name   string
		policy *egress.Policy
		addr   string // an address, or address and port (443 when none)
		block  string // "" when allowed
	}{
		{"ok/public IPv4", nil, "93.184.215.14", ""},
		{"ok/public IPv6", nil, "2606:2800:21f:cb07:6820:80da:af6b:8b2c", ""},
		{"ok/public IPv4 mapped", nil, "::ffff:93.184.215.14", ""},
		{"ok/allowed prefix", corp, "10.20.3.4", ""},
		{"ok/allowed single address", corp, "192.168.1.7", ""},
		{"ok/allowed IPv6 prefix", corp, "fd00:1::5", ""},
		{"ok/allowed prefix, IPv4 mapped", corp, "::ffff:10.20.3.4", ""},
		{"ok/loopback allowed", egress.Loopback(), "127.0.0.1", ""},
		{"ok/IPv6 loopback allowed", egress.Loopback(), "::1", ""},
		{"fail/loopback", nil, "127.0.0.1", "127.0.0.0/8 (loopback)"},
		{"fail/loopback, other address", nil, "127.3.2.1", "127.0.0.0/8 (loopback)"},
		{"fail/IPv6 loopback", nil, "::1", "::1/128 (loopback)"},
		{"fail/loopback, IPv4 mapped", nil, "::ffff:127.0.0.1", "127.0.0.0/8 (loopback)"},
		{"fail/unspecified", nil, "0.0.0.0", "0.0.0.0/8"},
		{"fail/IPv6 unspecified", nil, "::", "::/128"},
		{"fail/cloud metadata", nil, "169.254.169.254", "169.254.0.0/16 (link-local)"},
		{"fail/private 10", nil, "10.0.0.1", "10.0.0.0/8 (private)"},
		{"fail/private 172", nil, "172.17.0.2", "172.16.0.0/12 (private)"},
		{"fail/private 192.168", nil, "192.168.0.1", "192.168.0.0/16 (private)"},
		{"fail/private, beside the allowed address", corp, "192.168.1.8", "192.168.0.0/16"},
		{"fail/private, outside the allowed prefix", corp, "10.21.0.1", "10.0.0.0/8"},
		{"fail/shared address space", nil, "100.64.0.1", "100.64.0.0/10"},
		{"fail/broadcast", nil, "255.255.255.255", "240.0.0.0/4"},
		{"fail/multicast", nil, "224.0.0.1", "224.0.0.0/4"},
		{"fail/unique local", nil, "fd12:3456::1", "fc00::/7 (unique local)"},
		{"fail/IPv6 link-local", nil, "fe80::1", "fe80::/10 (link-local)"},
		{"fail/IPv6 link-local with a zone", nil, "fe80::1%eth0", "fe80::/10 (link-local)"},
		{"ok/IPv6 link-local with a zone, allowed", egress.Allow(egress.Entry{Prefix: netip.MustParsePrefix("fe80::/10")}), "fe80::1%eth0", ""},
		{"fail/NAT64 of a private address", nil, "64:ff9b::a00:1", "10.0.0.0/8 (private)"},
		{"fail/6to4 of a private address", nil, "2002:a00:1::1", "2002::/16 (6to4)"},
		{"fail/IPv4-compatible", nil, "::7f00:1", "::/96"},
		{"fail/IPv6 multicast", nil, "ff02::1", "ff00::/8"},
		{"ok/allowed address and port", corp, "192.168.2.9:8081", ""},
		{"fail/allowed address, other port", corp, "192.168.2.9:8080", "192.168.0.0/16"},
		{"ok/allowed IPv6 prefix and port", corp, "[fd00:2::7]:443", ""},
		{"fail/allowed IPv6 prefix, other port", corp, "[fd00:2::7]:80", "fc00::/7"},
		{"fail/Azure platform endpoint", nil, "168.63.129.16", "168.63.129.16/32"},
		{"ok/NAT64 of a public address", nil, "64:ff9b::5db8:d70e", ""},
		{"fail/NAT64 of loopback", nil, "64:ff9b::7f00:1", "127.0.0.0/8 (loopback)"},
		{"fail/NAT64 of the metadata service", nil, "64:ff9b::a9fe:a9fe", "169.254.0.0/16"},
		{"ok/NAT64 of an allowed address", corp, "[64:ff9b::a14:304]:443", ""},
		{"fail/IPv6 outside global unicast", nil, "100:0:0:1::1", "2000::/3"},
		{"fail/IPv4-translated (SIIT)", nil, "::ffff:0:7f00:1", "2000::/3"},
		{"fail/port 0", nil, "93.184.215.14:0", "port 0"},
		{"fail/denied port of an allowed prefix", denying, "127.0.0.1:8080", "127.0.0.1:8080 is denied (127.0.0.1/32:8080)"},
		{"ok/other port of the allowed prefix", denying, "127.0.0.1:8081", ""},
		{"fail/denied public address", denying, "93.184.215.14", "is denied (93.184.215.14/32)"},
		{"fail/denied, inside an allowed prefix", corpDenying, "10.20.9.4", "is denied (10.20.9.0/24)"},
		{"ok/allowed prefix beside the denied one", corpDenying, "10.20.8.4", ""},
		{"fail/NAT64 of a denied address", denying, "64:ff9b::5db8:d70e", "is denied"},
		{"fail/NAT64 of a denied address, NAT64 allowed", egress.Allow(egress.Entry{Prefix: netip.MustParsePrefix("64:ff9b::/96")}).WithDeny(deny...), "64:ff9b::5db8:d70e", "93.184.215.14:443 is denied"},
		{"ok/WithDeny keeps the allowed entries", corpDenying, "192.168.1.7", ""},
		{"ok/WithDeny leaves the original as it was", corp, "10.20.9.4", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ap, err := netip.ParseAddrPort(tc.addr)
			if err != nil {
				ap = netip.AddrPortFrom(netip.MustParseAddr(tc.addr), 443)
			}
			err = tc.policy.Check(ap)
			switch {
			case tc.block == "" && err != nil:
				t.Fatalf("Check(%s) = %v, want allowed", tc.addr, err)
			case tc.block != "" && err == nil:
				t.Fatalf("Check(%s) allowed, want refused (%s)", tc.addr, tc.block)
			case tc.block != "" && (!errors.Is(err, egress.ErrNotAllowed) || !strings.Contains(err.Error(), tc.block)):
				t.Fatalf("Check(%s) = %v, want ErrNotAllowed naming %s", tc.addr, err, tc.block)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		list    string
		want    string // String() of the policy
		mention string // in the error, when it fails
	}{
		{"ok/empty", "", "", ""},
		{"ok/spaces only", "  ", "", ""},
		{"ok/prefixes and addresses", " 10.0.0.0/8 ,fd00::/8,192.168.1.7, ::1", "10.0.0.0/8,fd00::/8,192.168.1.7/32,::1/128", ""},
		{"ok/unmasked prefix is masked", "10.1.2.3/8", "10.0.0.0/8", ""},
		{"ok/IPv4-mapped prefix is the IPv4 prefix", "::ffff:10.0.0.0/104", "10.0.0.0/8", ""},
		{"fail/not an address", "10.0.0.0/8,backend.internal", "", `entry 2, "backend.internal"`},
		{"fail/bad prefix length", "10.0.0.0/33", "", `entry 1, "10.0.0.0/33"`},
		{"fail/empty entry", "10.0.0.0/8,,fd00::/8", "", "entry 2 is empty"},
		{"fail/trailing comma", "10.0.0.0/8,", "", "entry 2 is empty"},
		{"fail/zone", "fe80::1%eth0", "", "zone"},
		{"ok/address and port", "10.0.0.1:80", "10.0.0.1/32:80", ""},
		{"ok/prefix and port", " 10.0.0.0/8:443", "10.0.0.0/8:443", ""},
		{"ok/IPv6 address and port", "[::1]:8081", "[::1/128]:8081", ""},
		{"ok/IPv6 prefix and port", "[fd00::/8]:443", "[fd00::/8]:443", ""},
		{"fail/port 0", "10.0.0.1:0", "", "port"},
		{"fail/port too large", "10.0.0.1:65536", "", "port"},
		{"fail/bracketed without port", "[::1]", "", `entry 1, "[::1]"`},
		{"fail/name and port", "origin:8081", "", `entry 1, "origin:8081"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := egress.Parse(tc.list)
			if tc.mention != "" {
				if err == nil || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("Parse(%q) = %v, %v; want an error mentioning %q", tc.list, p, err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.list, err)
			}
			if got := p.String(); got != tc.want {
				t.Fatalf("Parse(%q).String() = %q, want %q", tc.list, got, tc.want)
			}
			again, err := egress.Parse(p.String())
			if err != nil || again.String() != tc.want {
				t.Fatalf("Parse(String()) = %v, %v; want %q", again, err, tc.want)
			}
		})
	}
}

func TestCheckAddress(t *testing.T) {
	for _, tc := range []struct {
		name, address string
		ok            bool
	}{
		{"ok/public", "93.184.215.14:443", true},
		{"ok/public IPv6", "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443", true},
		{"fail/loopback", "127.0.0.1:8080", false},
		{"fail/name", "localhost:8080", false},
		{"fail/no port", "93.184.215.14", false},
		{"fail/empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := (*egress.Policy)(nil).CheckAddress(tc.address)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, egress.ErrNotAllowed)) {
				t.Fatalf("CheckAddress(%q) = %v, want allowed %v", tc.address, err, tc.ok)
			}
		})
	}
}

// TestControl dials real loopback listeners through a net.Dialer with the policy's Control: the
// check is on the address the connection is made to, after name resolution.
func TestControl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	dial := func(p *egress.Policy, address string) error {
		d := net.Dialer{Timeout: 5 * time.Second, ControlContext: p.Control}
		c, err := d.DialContext(context.Background(), "tcp", address)
		if err == nil {
			c.Close()
		}
		return err
	}

	if err := dial(nil, ln.Addr().String()); !errors.Is(err, egress.ErrNotAllowed) {
		t.Fatalf("dial %s with the default policy: %v, want ErrNotAllowed", ln.Addr(), err)
	}
	// A name resolving to loopback is refused the same way (the check runs after resolution).
	if err := dial(nil, net.JoinHostPort("localhost", port)); !errors.Is(err, egress.ErrNotAllowed) {
		t.Fatalf("dial localhost with the default policy: %v, want ErrNotAllowed", err)
	}
	select {
	case <-accepted:
		t.Fatal("a refused dial reached the listener")
	case <-time.After(50 * time.Millisecond):
	}
	if err := dial(egress.Loopback(), ln.Addr().String()); err != nil {
		t.Fatalf("dial %s with loopback allowed: %v", ln.Addr(), err)
	}
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the allowed dial did not reach the listener")
	}
	if err := (*egress.Policy)(nil).Control(context.Background(), "unix", "/run/x.sock", nil); !errors.Is(err, egress.ErrNotAllowed) {
		t.Fatalf("Control(unix) = %v, want ErrNotAllowed", err)
	}
}

// FuzzParse: Parse never panics, and what it accepts it prints in a form it reads back to the
// same policy.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "10.0.0.0/8", "fd00::/8,::1", "::ffff:10.0.0.0/104", "a,b", "1.2.3.4/0", "fe80::1%x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		p, err := egress.Parse(list)
		if err != nil {
			return
		}
		again, err := egress.Parse(p.String())
		if err != nil {
			t.Fatalf("Parse(%q) accepted, but not its String() %q: %v", list, p.String(), err)
		}
		if again.String() != p.String() {
			t.Fatalf("Parse(String()) = %q, want %q", again.String(), p.String())
		}
	})
}
