package layout

import (
	"strings"
	"testing"
	"time"
)

const (
	h32       = "0c3b2dqkp0fmqpgb9bspx1y3rc8j3prp"
	storePath = "/nix/store/" + h32 + "-hello-2.12"
	drv       = "/nix/store/1xq2cmvbnmzvd4rnh4fzq2qa5yrzi2rz-hello-2.12.drv"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name, key string
		kind      Kind
		carried   string
	}{
		{"cache info", "nix-cache-info", KindCacheInfo, ""},
		{"narinfo", h32 + ".narinfo", KindNarInfo, h32},
		{"narinfo key", NarInfoKey(storePath), KindNarInfo, h32},
		{"narinfo too short", h32[1:] + ".narinfo", KindForeign, h32[1:] + ".narinfo"},
		{"narinfo too long", "x" + h32 + ".narinfo", KindForeign, "x" + h32 + ".narinfo"},
		{"narinfo in a directory", "a/" + h32[2:] + ".narinfo", KindForeign, "a/" + h32[2:] + ".narinfo"},
		{"narinfo under nar/", "nar/" + h32 + ".narinfo", KindNAR, h32 + ".narinfo"},
		{"narinfo with another end", h32 + ".narinfo.bak", KindForeign, h32 + ".narinfo.bak"},
		{"listing", ListingKey(storePath), KindListing, h32},
		{"listing too short", h32[:31] + ".ls", KindForeign, h32[:31] + ".ls"},
		{"nar zst", NarKey("1b9p07z77phvv2hf6gm9f28syp39f1ag5y7vnvndwd0c5ggn7g2j", ".zst"), KindNAR, "1b9p07z77phvv2hf6gm9f28syp39f1ag5y7vnvndwd0c5ggn7g2j.nar.zst"},
		{"nar plain", NarKey("x", ""), KindNAR, "x.nar"},
		{"nar, any name", "nar/whatever", KindNAR, "whatever"},
		{"nar directory itself", "nar/", KindNAR, ""},
		{"nar without its slash", "nar", KindForeign, "nar"},
		{"log", LogKey(drv), KindLog, "1xq2cmvbnmzvd4rnh4fzq2qa5yrzi2rz-hello-2.12.drv"},
		{"log of no derivation", "log/hello.txt", KindForeign, "log/hello.txt"},
		{"log, compressed", LogKey(drv) + ".bz2", KindForeign, LogKey(drv) + ".bz2"},
		{"realisation", RealisationKey("sha256:abc!out"), KindRealisation, "sha256:abc!out"},
		{"realisation without .doi", "realisations/sha256:abc!out", KindForeign, "realisations/sha256:abc!out"},
		{"build trace", BuildTraceKey(drv, "out"), KindBuildTrace, "1xq2cmvbnmzvd4rnh4fzq2qa5yrzi2rz-hello-2.12.drv/out"},
		{"build trace without .doi", "build-trace-v2/x.drv/out", KindForeign, "build-trace-v2/x.drv/out"},
		{"root", RootKey(storePath), KindRoot, h32},
		{"root of a short name", RootPrefix + "abc", KindNixpush, RootPrefix + "abc"},
		{"root below a directory", RootPrefix + "a/" + h32[2:], KindNixpush, RootPrefix + "a/" + h32[2:]},
		{"root prefix alone", RootPrefix, KindNixpush, RootPrefix},
		{"root batch", RootBatchPrefix + "20261204T000000.000000000Z-0123456789ab", KindRootBatch, "20261204T000000.000000000Z-0123456789ab"},
		{"root batch of 32 characters", RootBatchPrefix + h32[6:], KindRootBatch, h32[6:]},
		{"pin", PinKey("release-1.0"), KindPin, "release-1.0"},
		{"pin of a bad name", PinPrefix + "a/b", KindPin, "a/b"},
		{"pin prefix alone", PinPrefix, KindPin, ""},
		{"sweep", SweepKey, KindSweep, ""},
		{"sweep with more", SweepKey + ".old", KindNixpush, SweepKey + ".old"},
		{"gc probe", GCProbePrefix + "0123", KindProbe, "0123"},
		{"preflight probe", PreflightPrefix + "host-1", KindProbe, "host-1"},
		{"upload marker", UploadMarkerKey("nar/x.nar.zst", "id"), KindUploadMarker, "x.nar.zst-" + UploadMarkerKey("", "id")[len(UploadMarkerPrefix)+1:]},
		{"other of nixpush", Prefix + "future/thing", KindNixpush, Prefix + "future/thing"},
		{"nixpush without its slash", "nixpush", KindForeign, "nixpush"},
		{"debuginfo", "debuginfo/0123abcd", KindForeign, "debuginfo/0123abcd"},
		{"empty", "", KindForeign, ""},
		{"index page", "index.html", KindForeign, "index.html"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, carried := Parse(tc.key)
			if kind != tc.kind || carried != tc.carried {
				t.Errorf("Parse(%q) = %v, %q; want %v, %q", tc.key, kind, carried, tc.kind, tc.carried)
			}
			if c := Classify(tc.key); c != kind {
				t.Errorf("Classify(%q) = %v; Parse says %v", tc.key, c, kind)
			}
		})
	}
}

func TestNewRootBatchKey(t *testing.T) {
	at := time.Date(2026, 12, 4, 1, 2, 3, 4, time.UTC)
	a, b := NewRootBatchKey(at), NewRootBatchKey(at)
	if a == b {
		t.Errorf("two batch keys of one moment are both %s", a)
	}
	kind, rest := Parse(a)
	if kind != KindRootBatch || !strings.HasPrefix(rest, "20261204T010203.000000004Z-") || len(rest) != len("20261204T010203.000000004Z-")+12 {
		t.Errorf("NewRootBatchKey = %s (%v, %q); want a root batch of its time and 12 hex digits", a, kind, rest)
	}
}

func TestKindNames(t *testing.T) {
	seen := map[string]Kind{}
	for k := range numKinds {
		s := k.String()
		if s == "" || strings.HasPrefix(s, "kind(") {
			t.Errorf("kind %d has no name", k)
		}
		if o, ok := seen[s]; ok {
			t.Errorf("kinds %d and %d are both %q", o, k, s)
		}
		seen[s] = k
	}
	if s := numKinds.String(); s != "kind(15)" {
		t.Errorf("an unknown kind reads %q", s)
	}
}
