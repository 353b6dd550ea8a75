package nix

import (
	"errors"
	"testing"
)

func TestStorePath(t *testing.T) {
	const ok = "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"
	for _, tc := range []struct {
		name, in, want string
		bad            bool
	}{
		{name: "plain", in: ok, want: ok},
		{name: "trailing slash", in: ok + "/", want: ok},
		{name: "drv", in: "/nix/store/y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv", want: "/nix/store/y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"},
		{name: "empty", in: "", bad: true},
		{name: "relative", in: "nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1", bad: true},
		{name: "traversal out", in: "/nix/store/../../etc/passwd", bad: true},
		{name: "traversal back in", in: "/nix/store/x/../84iphvw7rs2syhrdmwicjk2726dprxcw-t1", bad: true},
		{name: "dotdot name", in: "/nix/store/..", bad: true},
		{name: "subpath", in: ok + "/bin/sh", bad: true},
		{name: "store dir itself", in: "/nix/store", bad: true},
		{name: "other dir", in: "/tmp/84iphvw7rs2syhrdmwicjk2726dprxcw-t1", bad: true},
		{name: "short hash", in: "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxc-t1", bad: true},
		{name: "hash with e", in: "/nix/store/e4iphvw7rs2syhrdmwicjk2726dprxcw-t1", bad: true},
		{name: "no name", in: "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-", bad: true},
		{name: "space in name", in: "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-a b", bad: true},
		{name: "newline", in: ok + "\n", bad: true},
		{name: "nul", in: ok + "\x00", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := StorePath(DefaultStoreDir, tc.in)
			if tc.bad {
				if !errors.Is(err, ErrNotStorePath) {
					t.Fatalf("StorePath(%q) = %q, %v; want ErrNotStorePath", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("StorePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestHashPart(t *testing.T) {
	if got := HashPart("/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"); got != "84iphvw7rs2syhrdmwicjk2726dprxcw" {
		t.Fatalf("HashPart = %q", got)
	}
}

func FuzzStorePath(f *testing.F) {
	for _, s := range []string{"/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1", "/nix/store/../etc", "", "/nix/store/x/..", "//nix//store//84iphvw7rs2syhrdmwicjk2726dprxcw-t1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := StorePath(DefaultStoreDir, s)
		if err != nil {
			return
		}
		// Whatever is accepted names exactly one entry directly in the store.
		if len(p) <= len(DefaultStoreDir)+1+hashLen+1 || p[:len(DefaultStoreDir)+1] != DefaultStoreDir+"/" {
			t.Fatalf("accepted %q as %q", s, p)
		}
		rest := p[len(DefaultStoreDir)+1:]
		for _, c := range rest {
			if c == '/' {
				t.Fatalf("accepted %q as %q with a subpath", s, p)
			}
		}
		if rest == "." || rest == ".." {
			t.Fatalf("accepted %q", s)
		}
		if again, err := StorePath(DefaultStoreDir, p); err != nil || again != p {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, p, again, err)
		}
	})
}
