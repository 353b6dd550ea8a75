package nix

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// The inputs of NixOS/nix's src/libstore-tests/realisation.cc, whose
// expected outputs (src/libstore-tests/data/realisation/) testdata/buildtrace
// holds: the signed strings as Nix writes them, and the .doi bodies a
// binary cache gets for them (the compact dump() of the entry's value,
// with the signatures of the -sig.json fixtures). traceTestKey is the test
// key published there, so ed25519's determinism holds our signature to
// Nix's byte for byte.
const (
	traceTestKey = "test-key:tU7tTvLcScf8pmz/eTV0BEtLmRsPpZfKaRcd0nCN+pysBZPHSeg61/u2oc7mIOewfuAY1V1BiX32homTaDJ2Jw=="
	traceHash    = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q"
	zeroSig      = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="
)

func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "buildtrace", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBuildTraceMatchesNixFixtures(t *testing.T) {
	sk, err := signature.LoadSecretKey(traceTestKey)
	if err != nil {
		t.Fatal(err)
	}
	simple := Realisation{DrvPath: "/nix/store/" + traceHash + "-bar.drv", Output: "foo", OutPath: "/nix/store/" + traceHash + "-foo"}
	withSig := Realisation{DrvPath: "/nix/store/" + traceHash + "-bar.drv", Output: "foo", OutPath: "/nix/store/" + traceHash + "-foo.drv",
		TraceSigs: []TraceSignature{{KeyName: "asdf", Sig: zeroSig}}}
	for _, tc := range []struct {
		name        string
		r           Realisation
		keys        []signature.SecretKey
		fingerprint string // file
		body        string // file
	}{
		{"simple", simple, []signature.SecretKey{sk}, "simple-fingerprint.txt", "simple-signed.doi"},
		{"with-signature unsigned", withSig, nil, "with-signature-fingerprint.txt", "with-signature.doi"},
		{"with-signature signed", withSig, []signature.SecretKey{sk}, "with-signature-fingerprint.txt", "with-signature-signed.doi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp, err := tc.r.TraceFingerprint()
			if err != nil || fp != golden(t, tc.fingerprint) {
				t.Fatalf("fingerprint %s (%v)\nwant %s", fp, err, golden(t, tc.fingerprint))
			}
			body, err := tc.r.TraceSigned(tc.keys...)
			if err != nil || string(body) != golden(t, tc.body) {
				t.Fatalf("body %s (%v)\nwant %s", body, err, golden(t, tc.body))
			}
			// Signing again changes nothing.
			again := tc.r
			rs, err := ParseRealisationInfo([]byte(`[{"key":{"drvPath":"`+filepath.Base(tc.r.DrvPath)+`","outputName":"foo"},"value":`+string(body)+`}]`), DefaultStoreDir, "")
			if err != nil || len(rs) != 1 {
				t.Fatalf("reading the signed entry back: %v %v", rs, err)
			}
			again.TraceSigs = rs[0].TraceSigs
			if b, err := again.TraceSigned(tc.keys...); err != nil || string(b) != string(body) {
				t.Fatalf("signed twice: %s (%v)\nwant %s", b, err, body)
			}
			// go-nix checks what we signed against the public key.
			for _, s := range rs[0].TraceSigs {
				if s.KeyName != "test-key" {
					continue
				}
				data, _ := base64.StdEncoding.DecodeString(s.Sig)
				if !sk.ToPublicKey().Verify(fp, signature.Signature{Name: s.KeyName, Data: data}) {
					t.Fatal("the signature does not verify")
				}
			}
		})
	}
}

func TestTraceSignaturesSorted(t *testing.T) {
	var ks []signature.SecretKey
	for _, name := range []string{"zeta", "alpha", "mid"} {
		sk, _, err := signature.GenerateKeypair(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, sk)
	}
	r := Realisation{DrvPath: "/nix/store/" + traceHash + "-bar.drv", Output: "out", OutPath: "/nix/store/" + traceHash + "-foo",
		TraceSigs: []TraceSignature{{KeyName: "mid", Sig: zeroSig}, {KeyName: "beta", Sig: zeroSig}, {KeyName: "beta", Sig: zeroSig}}}
	body, err := r.TraceSigned(ks...)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, part := range strings.Split(string(body), `"keyName":"`)[1:] {
		names = append(names, part[:strings.IndexByte(part, '"')])
	}
	if strings.Join(names, ",") != "alpha,beta,mid,zeta" || strings.Count(string(body), zeroSig) != 1 {
		t.Fatalf("signatures %v in %s; want alpha,beta,mid,zeta, one each, mid's replaced", names, body)
	}
}

func TestParseRealisationInfo(t *testing.T) {
	const drv = "/nix/store/iwbc9znpmcycbzwn67bnvq6id3p3fg0m-ca-top.drv"
	for _, tc := range []struct {
		name, json string
		drv        string
		want       []Realisation // ID, DrvPath, Output, OutPath, TraceSigs compared
		ok         bool
	}{
		{"nix 2.8", `[{"dependentRealisations":{},"id":"sha256:ab!out","outPath":"3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep","signatures":["k:` + zeroSig + `"]}]`, drv,
			[]Realisation{{ID: "sha256:ab!out", DrvPath: drv, Output: "out", OutPath: "/nix/store/3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep"}}, true},
		{"nix 2.8, drv unknown", `[{"id":"sha256:ab!dev","outPath":"/nix/store/3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep","signatures":[]}]`, "",
			[]Realisation{{ID: "sha256:ab!dev", OutPath: "/nix/store/3r3dhgsk4h4v6srjda3l27n57y3phhpy-ca-dep"}}, true},
		// src/libstore-tests/data/realisation/with-signature.json, as printed.
		{"nix 2.35", `[{
  "key": {
    "drvPath": "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv",
    "outputName": "foo"
  },
  "value": {
    "outPath": "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv",
    "signatures": [
      {
        "keyName": "asdf",
        "sig": "` + zeroSig + `"
      }
    ]
  }
}]`, drv, []Realisation{{DrvPath: "/nix/store/" + traceHash + "-bar.drv", Output: "foo", OutPath: "/nix/store/" + traceHash + "-foo.drv",
			TraceSigs: []TraceSignature{{KeyName: "asdf", Sig: zeroSig}}}}, true},
		// with-signature-unstructured.json: signatures as strings.
		{"nix 2.35 string signatures", `[{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv","outputName":"foo"},"value":{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv","signatures":["asdf:` + zeroSig + `"]}}]`, "",
			[]Realisation{{DrvPath: "/nix/store/" + traceHash + "-bar.drv", Output: "foo", OutPath: "/nix/store/" + traceHash + "-foo.drv",
				TraceSigs: []TraceSignature{{KeyName: "asdf", Sig: zeroSig}}}}, true},
		{"nix 2.35 simple", `[{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv","outputName":"foo"},"value":{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":[]}}]`, "",
			[]Realisation{{DrvPath: "/nix/store/" + traceHash + "-bar.drv", Output: "foo", OutPath: "/nix/store/" + traceHash + "-foo"}}, true},
		{"none", `[]`, drv, nil, true},
		{"a bare drv asked of nix 2.13+", `[{"opaquePath":"` + drv + `"}]`, drv, nil, false},
		{"key not a drv", `[{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar","outputName":"foo"},"value":{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}}]`, "", nil, false},
		{"output with a slash", `[{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv","outputName":"../x"},"value":{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}}]`, "", nil, false},
		{"outPath elsewhere", `[{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv","outputName":"foo"},"value":{"outPath":"/tmp/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}}]`, "", nil, false},
		{"bad signature", `[{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv","outputName":"foo"},"value":{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":[{"keyName":"k","sig":"not base64!"}]}}]`, "", nil, false},
		{"not an array", `{"key":{"drvPath":"x.drv","outputName":"out"}}`, drv, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := ParseRealisationInfo([]byte(tc.json), DefaultStoreDir, tc.drv)
			if !tc.ok {
				if err == nil || !errors.Is(err, ErrRealisationFormat) {
					t.Fatalf("got %+v, %v; want ErrRealisationFormat", rs, err)
				}
				return
			}
			if err != nil || len(rs) != len(tc.want) {
				t.Fatalf("got %+v, %v; want %+v", rs, err, tc.want)
			}
			for i, w := range tc.want {
				g := rs[i]
				if g.ID != w.ID || g.DrvPath != w.DrvPath || g.Output != w.Output || g.OutPath != w.OutPath || len(g.TraceSigs) != len(w.TraceSigs) || len(g.JSON) == 0 {
					t.Fatalf("got %+v; want %+v", g, w)
				}
				for j := range w.TraceSigs {
					if g.TraceSigs[j] != w.TraceSigs[j] {
						t.Fatalf("signature %d: %+v; want %+v", j, g.TraceSigs[j], w.TraceSigs[j])
					}
				}
			}
		})
	}
}
