package nix

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nixpush/nixpush/internal/testenv"
)

// These tests hold nixpush's narinfo text, fingerprints and signatures
// against what Nix itself produces for the same paths.

func needNix(t *testing.T) {
	t.Helper()
	for _, b := range []string{"nix", "nix-build", "nix-store"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: install Nix (run ./scripts/test.sh, which installs it)", b)
		}
	}
	t.Logf("against %s", testenv.NixVersion())
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
}

// nixCmd runs a Nix command, failing the test if it fails or has not
// answered within testenv.NixTimeout (waiting for the store's big lock,
// which another process holds: the test fails saying so, never hangs).
func nixCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.NixTimeout)
	defer cancel()
	var stderr testenv.SyncBuffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: no answer after %v (waiting for the Nix store's lock?)\n%s", name, strings.Join(args, " "), testenv.NixTimeout, stderr.String())
	}
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func seed(t *testing.T) string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// buildRefs builds three paths: a leaf, a path referring to itself, and a
// path referring to both and to itself, and returns the top one.
func buildRefs(t *testing.T) string {
	t.Helper()
	expr := `let s = "` + seed(t) + `"; mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" script]; };
  leaf = mk "leaf" "echo ${s} > $out";
  self = mk "self" "echo ${s} $out > $out";
in mk "top" "/bin/mkdir $out; echo ${leaf} ${self} > $out/refs; echo $out > $out/me"`
	return nixCmd(t, "nix-build", "--no-out-link", "-E", expr)
}

func TestNarInfoMatchesNix(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "sec"), filepath.Join(dir, "pub")
	nixCmd(t, "nix-store", "--generate-binary-cache-key", "nixpush-test-1", sec, pub)
	key, err := LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	pubText, _ := os.ReadFile(pub)
	if got := key.ToPublicKey().String(); got != string(pubText) {
		t.Fatalf("public key of Nix's secret key: got %q, Nix wrote %q", got, pubText)
	}
	pk, err := ParsePublicKey(string(pubText))
	if err != nil {
		t.Fatal(err)
	}

	top := buildRefs(t)
	cache := filepath.Join(dir, "cache")
	nixCmd(t, "nix", "--extra-experimental-features", "nix-command", "copy",
		"--to", "file://"+cache+"?compression=none&secret-key="+sec, top)

	c := &Client{}
	infos, err := c.QueryClosure(ctx, []string{top})
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 3 {
		t.Fatalf("closure of %s: got %d paths, want 3", top, len(infos))
	}
	selfRefs := 0
	for _, info := range infos {
		for _, r := range info.References {
			if r == info.Path {
				selfRefs++
			}
		}
		// With no compression the file is the NAR and Nix names it by its hash.
		up := Upload{
			URL:         "nar/" + nixbase32.EncodeToString(info.NarHash.Digest()) + ".nar",
			Compression: "none", FileHash: info.NarHash, FileSize: info.NarSize,
		}
		ni, err := NarInfo(info, up, key)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(cache, HashPart(info.Path)+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		if ni.String() != string(want) {
			t.Errorf("narinfo of %s differs from Nix's\n--- nixpush\n%s--- nix\n%s", info.Path, ni.String(), want)
		}
		parsed, err := narinfo.Parse(bytes.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		if !VerifyNarInfo(parsed, pk) {
			t.Errorf("%s: Nix's signature does not verify with our fingerprint %q", info.Path, Fingerprint(info))
		}
	}
	if selfRefs != 2 {
		t.Errorf("self references seen: %d, want 2", selfRefs)
	}
}

func TestSignatureMatchesNixStoreSign(t *testing.T) {
	needNix(t)
	ctx := context.Background()
	dir := t.TempDir()
	sec := filepath.Join(dir, "sec")
	// A key made by `nix key generate-secret`, the newer command.
	secText := nixCmd(t, "nix", "--extra-experimental-features", "nix-command", "key", "generate-secret", "--key-name", "nixpush-test-2")
	if err := os.WriteFile(sec, []byte(secText), 0o600); err != nil {
		t.Fatal(err)
	}
	pubText := nixCmd(t, "sh", "-c", "nix --extra-experimental-features nix-command key convert-secret-to-public < "+sec)
	key, err := LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	if key.ToPublicKey().String() != pubText {
		t.Fatalf("public key: got %q, nix key convert-secret-to-public says %q", key.ToPublicKey().String(), pubText)
	}

	top := buildRefs(t)
	c := &Client{}
	before, err := c.QueryClosure(ctx, []string{top})
	if err != nil {
		t.Fatal(err)
	}
	nixCmd(t, "nix", "--extra-experimental-features", "nix-command", "store", "sign", "--recursive", "--key-file", sec, top)
	after, err := c.QueryClosure(ctx, []string{top})
	if err != nil {
		t.Fatal(err)
	}
	nixSigs := map[string][]string{}
	for _, info := range after {
		nixSigs[info.Path] = info.Sigs
	}
	for _, info := range before {
		ni, err := NarInfo(info, Upload{URL: "nar/x.nar", Compression: "none"}, key)
		if err != nil {
			t.Fatal(err)
		}
		ours := ni.Signatures[len(ni.Signatures)-1].String()
		found := false
		for _, s := range nixSigs[info.Path] {
			found = found || s == ours
		}
		if !found {
			t.Errorf("%s: our signature %s is not among nix store sign's %v", info.Path, ours, nixSigs[info.Path])
		}
	}
	// Signing again keeps Nix's signature once and adds no duplicate.
	for _, info := range after {
		ni, err := NarInfo(info, Upload{URL: "nar/x.nar", Compression: "none"}, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(ni.Signatures) != len(info.Sigs) {
			t.Errorf("%s: %d signatures after re-signing, want %d", info.Path, len(ni.Signatures), len(info.Sigs))
		}
	}
}

func TestLoadSecretKeyFileRefusesLooseMode(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "sec")
	os.WriteFile(f, []byte("x:AAAA"), 0o644)
	_, err := LoadSecretKeyFile(f)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+f) {
		t.Fatalf("err = %v; want a refusal naming the fix", err)
	}
}

func TestQueryInvalidPath(t *testing.T) {
	needNix(t)
	c := &Client{}
	_, err := c.Query(context.Background(), []string{"/nix/store/00000000000000000000000000000000-nope"})
	if !IsInvalid(err) {
		t.Fatalf("err = %v; want ErrInvalidPath", err)
	}
}
