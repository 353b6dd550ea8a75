package nix

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// TestRealisationsMatchNix builds content-addressed derivations with Nix
// signing their realisations (secret-key-files), reads them back through
// Client.Realisations and Outputs, and checks that nixpush's signature of a
// realisation is byte for byte the one Nix made with the same key (ed25519
// is deterministic, so this holds the fingerprint to Nix's own).
func TestRealisationsMatchNix(t *testing.T) {
	needNix(t)
	sk, _, err := signature.GenerateKeypair("nixpush-realisation-test-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(keyFile, []byte(sk.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	expr := `let s = "` + seed(t) + `";
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" script ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  dep = mk "ca-dep" "echo ${s} > $out";
in mk "ca-top" "echo ${s} ${dep} > $out"`
	ca := []string{"--option", "experimental-features", "nix-command ca-derivations"}
	out := nixCmd(t, "nix-build", append([]string{"--no-out-link", "-E", expr, "--option", "secret-key-files", keyFile}, ca...)...)
	drv := nixCmd(t, "nix-instantiate", append([]string{"-E", expr}, ca...)...)

	ctx := context.Background()
	c := &Client{}
	if floating, err := FloatingCA(drv); err != nil || !floating {
		t.Fatalf("FloatingCA(%s) = %v, %v", drv, floating, err)
	}
	rs, err := c.Realisations(ctx, drv)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].OutPath != out {
		t.Fatalf("realisations of %s: %+v; want one for %s", drv, rs, out)
	}
	var nixMade struct{ Signatures []string }
	if err := json.Unmarshal(rs[0].JSON, &nixMade); err != nil || len(nixMade.Signatures) != 1 {
		t.Fatalf("Nix signed the realisation with %v (%v); want one signature", nixMade.Signatures, err)
	}

	// Sign the realisation as Nix recorded it minus Nix's signature.
	var obj map[string]json.RawMessage
	json.Unmarshal(rs[0].JSON, &obj)
	obj["signatures"] = json.RawMessage("[]")
	unsigned := rs[0]
	unsigned.JSON, _ = json.Marshal(obj)
	signed, err := unsigned.Signed(sk)
	if err != nil {
		t.Fatal(err)
	}
	var ours struct{ Signatures []string }
	if err := json.Unmarshal(signed, &ours); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ours.Signatures, nixMade.Signatures) {
		t.Fatalf("nixpush signs %v, Nix signed %v", ours.Signatures, nixMade.Signatures)
	}
	// Signing again replaces a signature by the same key, not adds one.
	if again, err := (Realisation{ID: rs[0].ID, JSON: signed}).Signed(sk); err != nil || string(again) != string(signed) {
		t.Fatalf("signing twice: %v\n%s\n%s", err, again, signed)
	}

	outs, err := c.Outputs(ctx, drv)
	if err != nil || !slices.Equal(outs, []string{out}) {
		t.Fatalf("Outputs(%s) = %v, %v; want [%s] (nix-store --query --outputs refuses floating CA derivations)", drv, outs, err, out)
	}
}

func TestParseRealisations(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		ok         bool
	}{
		{"nix 2.8", `[{"dependentRealisations":{},"id":"sha256:ab!out","outPath":"3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep","signatures":[]}]`, true},
		{"nix 2.34", `[{"dependentRealisations":{},"id":"sha256:701332fac3f1b3ce6a418a8e05e9bcf255fd69057191fafcd93b0cb7f7cabbc7!out","outPath":"d5rjplwkvrqppc6nsqkbsm7gmfmfd1by-ca-top","signatures":[]}]`, true},
		{"full outPath", `[{"id":"sha256:ab!out","outPath":"/nix/store/3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep","signatures":[]}]`, true},
		{"none", `[]`, true},
		{"a bare drv asked of nix 2.13+", `[{"opaquePath":"/nix/store/iwbc9znpmcycbzwn67bnvq6id3p3fg0m-ca-top.drv"}]`, false},
		{"not an array", `{"key":{"drvPath":"x.drv","outputName":"out"}}`, false},
		{"no id", `[{"outPath":"3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep"}]`, false},
		{"id with a slash", `[{"id":"../x!out","outPath":"3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep"}]`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRealisations([]byte(tc.json), DefaultStoreDir)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrRealisationFormat)) {
				t.Fatalf("ParseRealisations(%s): %v", tc.json, err)
			}
		})
	}
}
