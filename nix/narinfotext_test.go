package nix

import (
	"slices"
	"testing"
)

// TestParseNarInfoText: the lenient parse reads what Nix writes, leaves
// out lines it does not know and signatures it cannot parse, reads past a
// field that does not parse, and reads a compacted .narinfo as the whole.
func TestParseNarInfoText(t *testing.T) {
	const whole = "StorePath: /nix/store/0a1bcdfghijklmnpqrsvwxyz0a1bcdfg-b\n" +
		"URL: nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst\n" +
		"Compression: zstd\n" +
		"FileHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n" +
		"FileSize: 120\n" +
		"NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n" +
		"NarSize: 400\n" +
		"References: 0a1bcdfghijklmnpqrsvwxyz0a1bcdfg-b 1a1bcdfghijklmnpqrsvwxyz0a1bcdfg-a\n" +
		"Deriver: 2a1bcdfghijklmnpqrsvwxyz0a1bcdfg-b.drv\n" +
		"System: x86_64-linux\n" +
		"Sig: other-tool:not-ed25519\n" +
		"Unknown: another tool's line\n"
	ni, err := ParseNarInfo([]byte(whole))
	if err != nil {
		t.Fatal(err)
	}
	if ni.StorePath != "/nix/store/0a1bcdfghijklmnpqrsvwxyz0a1bcdfg-b" || ni.Compression != "zstd" || ni.FileSize != 120 ||
		ni.NarSize != 400 || len(ni.References) != 2 || ni.Deriver != "2a1bcdfghijklmnpqrsvwxyz0a1bcdfg-b.drv" || len(ni.Signatures) != 0 {
		t.Fatalf("parsed %+v", ni)
	}
	compact, err := ParseNarInfo(CompactNarInfo([]byte(whole)))
	if err != nil {
		t.Fatal(err)
	}
	if compact.StorePath != ni.StorePath || compact.URL != ni.URL || compact.NarHash.String() != ni.NarHash.String() ||
		compact.NarSize != ni.NarSize || compact.FileSize != ni.FileSize || !slices.Equal(compact.References, ni.References) ||
		compact.Deriver != ni.Deriver || compact.Compression != ni.Compression {
		t.Fatalf("compacted %+v, whole %+v", compact, ni)
	}
	for _, tc := range []struct{ name, text string }{
		{"empty", ""},
		{"no URL", "StorePath: /nix/store/x\n"},
		{"bad NarHash", "StorePath: /nix/store/x\nURL: nar/x\nNarHash: nonsense\nNarSize: 1\nReferences: a b\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseNarInfo([]byte(tc.text)); err == nil {
				t.Errorf("%q parsed", tc.text)
			}
			if got := CompactNarInfo([]byte(tc.text)); string(got) != tc.text {
				t.Errorf("compacted an unreadable one to %q", got)
			}
		})
	}
	ni, _ = ParseNarInfo([]byte("StorePath: /nix/store/x\nURL: nar/x\nNarHash: nonsense\nNarSize: 1\nReferences: a b\n"))
	if ni.URL != "nar/x" || !slices.Equal(ni.References, []string{"a", "b"}) {
		t.Fatalf("past a bad line: %+v", ni)
	}
}
