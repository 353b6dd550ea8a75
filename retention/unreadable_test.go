package retention

import (
	"context"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
)

// appendLine adds a line to the .narinfo of the path named name.
func (f *fixture) appendLine(name, line string) {
	f.t.Helper()
	key := layout.NarInfoKey(f.paths[name])
	data, err := f.b.Get(context.Background(), key)
	if err != nil {
		f.t.Fatal(err)
	}
	f.put(key, string(data)+line+"\n")
}

// narOf is the NAR key the .narinfo of the path named name gives.
func (f *fixture) narOf(name string) string {
	f.t.Helper()
	data, err := f.b.Get(context.Background(), layout.NarInfoKey(f.paths[name]))
	if err != nil {
		f.t.Fatal(err)
	}
	ni, err := nix.ParseNarInfo(data)
	if ni == nil || ni.URL == "" {
		f.t.Fatalf("no URL in the .narinfo of %s: %v", name, err)
	}
	return ni.URL
}

// TestForeignSigKeepsChain: a Sig line another tool wrote, which no
// ed25519 key could check (Nix accepts it and ignores it), makes no
// .narinfo unreadable: gc keeps the whole closure of a path whose
// .narinfo carries one, and verify finds the cache whole. (Issue 18,
// point 6; issue 24.)
func TestForeignSigKeepsChain(t *testing.T) {
	ctx := context.Background()
	for _, sig := range []string{
		"Sig: other-tool:not-ed25519",
		"Sig: no-colon-at-all",
		"Sig: ",
	} {
		t.Run(sig, func(t *testing.T) {
			f := newFixture(t)
			f.add("leaf")
			f.add("mid", "leaf")
			f.add("top", "mid")
			f.add("unrelated") // no root, no pin, old: goes
			f.appendLine("top", sig)
			f.age(time.Now().Add(-2 * time.Hour))
			// Everything is older than the grace period: only the pin
			// keeps top, and through it mid and leaf.
			if err := AddPin(ctx, f.b, "release", f.paths["top"], time.Now()); err != nil {
				t.Fatal(err)
			}
			rep, err := GC(ctx, f.b, GCOptions{OlderThan: time.Hour, Grace: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{f.paths["unrelated"]}; !slices.Equal(rep.Deleted.Paths, want) {
				t.Errorf("gc deleted %v; want only %v", rep.Deleted.Paths, want)
			}
			for _, name := range []string{"top", "mid", "leaf"} {
				if !f.has(name) {
					t.Errorf("%s's .narinfo was deleted", name)
				}
				if !f.exists(f.narOf(name)) {
					t.Errorf("%s's NAR was deleted", name)
				}
			}
			v, err := Verify(ctx, f.b, VerifyOptions{Keys: []signature.PublicKey{f.key.ToPublicKey()}})
			if err != nil {
				t.Fatal(err)
			}
			if !v.Whole() || v.Paths != 3 {
				t.Errorf("verify: %d paths, problems %+v; want 3 paths, none", v.Paths, v.Problems)
			}
		})
	}
}

// TestForeignSigUnpinned is the issue's own scenario: no root, no pin,
// every object older than the grace period, one foreign Sig line on the
// top path. Whatever gc does with top, it must not keep top and delete
// what top refers to.
func TestForeignSigUnpinned(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.add("leaf")
	f.add("mid", "leaf")
	f.add("top", "mid")
	f.appendLine("top", "Sig: other-tool:not-ed25519")
	f.age(time.Now().Add(-2 * time.Hour))
	if _, err := GC(ctx, f.b, GCOptions{OlderThan: time.Hour, Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if f.has("top") {
		for _, name := range []string{"mid", "leaf"} {
			if !f.has(name) {
				t.Errorf("gc kept top but deleted %s, which top refers to: the cache is broken for Nix", name)
			}
		}
	}
	v, err := Verify(ctx, f.b, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Whole() {
		t.Errorf("verify after gc: %+v; want no problem", v.Problems)
	}
}

// TestUnreadableKeepsReferences: a .narinfo gc truly cannot read (a
// NarHash that does not parse) is kept, and so is everything its
// References line names, wherever that line stands; verify reports it
// unreadable and, once a reference's .narinfo is gone, that reference
// missing too.
func TestUnreadableKeepsReferences(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		lines func(refs string) []string
	}{
		{"references after the bad line", func(refs string) []string {
			return []string{"StorePath: " + brokenPath, "URL: nar/broken.nar", "Compression: none",
				"NarHash: nonsense", "NarSize: 1", "References: " + refs}
		}},
		{"references before the bad line", func(refs string) []string {
			return []string{"StorePath: " + brokenPath, "References: " + refs, "URL: nar/broken.nar",
				"NarHash: sha256:nonsense", "NarSize: 1"}
		}},
		{"bad NarSize, no StorePath", func(refs string) []string {
			return []string{"URL: nar/broken.nar", "NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
				"NarSize: lots", "References: " + refs}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.add("leaf")
			f.add("mid", "leaf")
			f.add("other")
			f.add("unrelated")
			refs := path.Base(f.paths["mid"]) + " " + path.Base(f.paths["other"]) + " " + path.Base(brokenPath) // and itself
			f.put("nar/broken.nar", "x")
			f.put(brokenKey, strings.Join(tc.lines(refs), "\n")+"\n")
			f.age(time.Now().Add(-2 * time.Hour))

			rep, err := GC(ctx, f.b, GCOptions{OlderThan: time.Hour, Grace: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{f.paths["unrelated"]}; !slices.Equal(rep.Deleted.Paths, want) {
				t.Errorf("gc deleted %v; want only %v", rep.Deleted.Paths, want)
			}
			for _, name := range []string{"mid", "leaf", "other"} {
				if !f.has(name) {
					t.Errorf("%s, which the unreadable .narinfo refers to (or its reference does), was deleted", name)
				}
			}
			for _, key := range []string{brokenKey, "nar/broken.nar"} {
				if !f.exists(key) {
					t.Errorf("%s was deleted", key)
				}
			}

			// A reference gone (by hand: gc would not): verify names it.
			if err := f.b.Delete(ctx, layout.NarInfoKey(f.paths["other"])); err != nil {
				t.Fatal(err)
			}
			v, err := Verify(ctx, f.b, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, p := range v.Problems {
				if nix.StoreHashPart(p.Path) != brokenHash {
					t.Errorf("problem of another path: %+v", p)
				}
				kinds = append(kinds, p.Kind)
				if p.Kind == ReferenceMissing && !strings.HasPrefix(p.Detail, path.Base(f.paths["other"])+" ") {
					t.Errorf("reference-missing names %q; want %s", p.Detail, path.Base(f.paths["other"]))
				}
			}
			if want := []string{ReferenceMissing, Unreadable}; !slices.Equal(kinds, want) {
				t.Errorf("verify: %+v; want the kinds %v", v.Problems, want)
			}
		})
	}
}

const (
	brokenHash = "11111111111111111111111111111111"
	brokenPath = "/nix/store/" + brokenHash + "-broken"
	brokenKey  = brokenHash + ".narinfo"
)

// TestParseNarInfoLenient: a Sig line that is not a signature nixpush can
// check is left out, not an error; a field that does not parse makes the
// .narinfo unreadable, but the URL and References are read all the same.
func TestParseNarInfoLenient(t *testing.T) {
	f := newFixture(t)
	f.add("a")
	f.add("b", "a")
	f.appendLine("b", "Sig: other-tool:not-ed25519")
	data, err := f.b.Get(context.Background(), layout.NarInfoKey(f.paths["b"]))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := nix.ParseNarInfo(data)
	if err != nil {
		t.Fatalf("a foreign Sig line: %v", err)
	}
	if len(ni.Signatures) != 1 || !nix.VerifyNarInfo(ni, f.key.ToPublicKey()) || len(ni.References) != 1 {
		t.Fatalf("parsed %+v; want the one signature nixpush made, checked, and a reference", ni)
	}

	ni, err = nix.ParseNarInfo([]byte("StorePath: " + brokenPath + "\nNarHash: nonsense\nURL: nar/x.nar\nReferences: " +
		path.Base(f.paths["a"]) + "\nNarSize: 1\n"))
	if err == nil {
		t.Fatal("a NarHash that does not parse: no error")
	}
	if ni == nil || ni.URL != "nar/x.nar" || !slices.Equal(ni.References, []string{path.Base(f.paths["a"])}) || ni.StorePath != brokenPath {
		t.Fatalf("after the bad line: %+v; want the URL, StorePath and References read", ni)
	}
}
