package esdbstore

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseConnectionStringKeepsThePassword: for a connection string whose password holds a
// marker, ParseConnectionString either refuses it with an error that does not repeat the marker
// (no part of the password around it), or accepts it with the whole marker in the password the
// client will send, and none in the addresses it connects to (which are logged).
//
// Strings naming files (tlsCAFile and the like) are left out: the client reads them.
func FuzzParseConnectionStringKeepsThePassword(f *testing.F) {
	for _, s := range [][4]string{
		{"admin", "", "", "localhost:2113?tls=false"},
		{"admin", "x", "y", "h1:2113,h2:2113,h3:2113"},
		{"admin", "2113/", "", "localhost:2113"},
		{"admin", "", ":1", "h1:2113?tls=maybe"},
		{"ad:min", "a,b", "", "h1:2113,h2:x"},
		{"admin", "%41", "@", "host"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	const marker = "S3cr"
	f.Fuzz(func(t *testing.T, user, pre, post, rest string) {
		if strings.Contains(strings.ToLower(user+rest), strings.ToLower(marker)) || strings.Contains(strings.ToLower(user+pre+post+rest), "file") {
			return
		}
		s := "esdb://" + user + ":" + pre + marker + post + "@" + rest
		cfg, err := ParseConnectionString(s)
		if err != nil {
			if !errors.Is(err, ErrBadConnectionString) {
				t.Fatalf("ParseConnectionString(%q) = %v, not ErrBadConnectionString", s, err)
			}
			if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(marker)) {
				t.Fatalf("ParseConnectionString(%q) repeats the password: %v", s, err)
			}
			return
		}
		if !strings.Contains(cfg.Password, marker) {
			t.Fatalf("ParseConnectionString(%q): password %q, user %q lost the marker", s, cfg.Password, cfg.Username)
		}
		addrs := []string{cfg.Address}
		for _, ep := range cfg.GossipSeeds {
			addrs = append(addrs, ep.Host)
		}
		for _, a := range addrs {
			if strings.Contains(strings.ToLower(a), strings.ToLower(marker)) {
				t.Fatalf("ParseConnectionString(%q): the password is in the address %q", s, a)
			}
		}
	})
}
