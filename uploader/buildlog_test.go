package uploader

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/rs/zerolog"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("bzip2 data invalid") }

// TestPutLog: a build log goes to log/<drv name> as it is; a log that
// cannot be read fails permanently, since retrying reads it no better.
func TestPutLog(t *testing.T) {
	dir := t.TempDir()
	s, err := store.NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	u := New(Config{Store: s, Key: testKey(t)})
	const drv = "/nix/store/y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"
	ctx := context.Background()
	if err := u.PutLog(ctx, drv, strings.NewReader("line one\nline two\n")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "log", "y0hd3jhar8r876by1rvnbr6q88h80n9c-t1.drv"))
	if err != nil || string(got) != "line one\nline two\n" {
		t.Fatalf("log/<drv>: %q, %v", got, err)
	}
	if u.Stats().Logs != 1 {
		t.Fatalf("stats: %+v", u.Stats())
	}
	err = u.PutLog(ctx, drv, io.MultiReader(strings.NewReader("x"), failingReader{}))
	if err == nil || !store.IsPermanent(err) {
		t.Fatalf("an unreadable log: %v; want a permanent error", err)
	}
}

// TestPutRealisation: a realisation read from Nix 2.8 to 2.34 goes to
// realisations/<id>.doi and, keyed by the derivation asked, to
// build-trace-v2/<drv>/<output>.doi, each signed over its own string; one
// read from Nix 2.35 (no id) to build-trace-v2/ alone; one with neither
// fails permanently. A gc that deletes either object while its sweep is
// under way (an older one listed under the same key) finds it written
// again by the check after writes.
func TestPutRealisation(t *testing.T) {
	const (
		drv = "/nix/store/iwbc9znpmcycbzwn67bnvq6id3p3fg0m-ca-top.drv"
		out = "/nix/store/d5rjplwkvrqppc6nsqkbsm7gmfmfd1by-ca-top"
		id  = "sha256:701332fac3f1b3ce6a418a8e05e9bcf255fd69057191fafcd93b0cb7f7cabbc7!out"
	)
	old, err := nix.ParseRealisationInfo([]byte(`[{"dependentRealisations":{},"id":"`+id+`","outPath":"`+filepath.Base(out)+`","signatures":[]}]`), nix.DefaultStoreDir, drv)
	if err != nil {
		t.Fatal(err)
	}
	trace, err := nix.ParseRealisationInfo([]byte(`[{"key":{"drvPath":"`+filepath.Base(drv)+`","outputName":"out"},"value":{"outPath":"`+filepath.Base(out)+`","signatures":[]}}]`), nix.DefaultStoreDir, "")
	if err != nil {
		t.Fatal(err)
	}
	traceKey := "build-trace-v2/iwbc9znpmcycbzwn67bnvq6id3p3fg0m-ca-top.drv/out.doi"
	for _, tc := range []struct {
		name    string
		r       nix.Realisation
		want    []string // keys written
		victims []string // deleted by a sweep right after the first write of the last key
	}{
		{"nix 2.8 to 2.34", old[0], []string{layout.RealisationKey(id), traceKey}, nil},
		{"nix 2.35", trace[0], []string{traceKey}, nil},
		{"build trace swept", old[0], []string{layout.RealisationKey(id), traceKey}, []string{traceKey}},
		{"both swept", old[0], []string{layout.RealisationKey(id), traceKey}, []string{layout.RealisationKey(id), traceKey}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			base, err := store.NewFileStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			// The output's .narinfo, which the realisation relies on.
			if err := base.Put(context.Background(), layout.NarInfoKey(out), strings.NewReader("StorePath: "+out+"\n"), -1, "text/x-nix-narinfo"); err != nil {
				t.Fatal(err)
			}
			var s store.Store = base
			var g *gcStore
			if tc.victims != nil {
				g = &gcStore{FileStore: base, t: t, trigger: tc.want[len(tc.want)-1], victims: tc.victims, after: true}
				s = g
			}
			sk := testKey(t)
			u := New(Config{Store: s, Key: sk, Log: zerolog.Nop()})
			u.cfg.ClockSkew = 50 * time.Millisecond
			if err := u.PutRealisation(context.Background(), tc.r); err != nil {
				t.Fatal(err)
			}
			if g != nil {
				g.wg.Wait()
			}
			for _, key := range tc.want {
				body, err := os.ReadFile(filepath.Join(dir, key))
				if err != nil {
					t.Fatalf("%s: %v", key, err)
				}
				var want []byte
				if key == traceKey {
					want, err = tc.r.TraceSigned(sk)
					fp, _ := tc.r.TraceFingerprint()
					var v struct {
						Signatures []struct{ KeyName, Sig string }
					}
					json.Unmarshal(body, &v)
					if len(v.Signatures) != 1 || !verifies(sk.ToPublicKey(), fp, v.Signatures[0].KeyName, v.Signatures[0].Sig) {
						t.Fatalf("%s: signatures %+v do not verify over %s", key, v.Signatures, fp)
					}
				} else {
					want, err = tc.r.Signed(sk)
				}
				if err != nil || string(body) != string(want) {
					t.Fatalf("%s: %s (%v)\nwant %s", key, body, err, want)
				}
			}
			if tc.r.ID == "" {
				if ents, _ := os.ReadDir(filepath.Join(dir, "realisations")); len(ents) != 0 {
					t.Fatalf("realisations/ holds %v for an entry without id", ents)
				}
			}
		})
	}
	u := New(Config{Store: nil, Key: testKey(t), Log: zerolog.Nop()})
	if err := u.PutRealisation(context.Background(), nix.Realisation{OutPath: out}); !store.IsPermanent(err) {
		t.Fatalf("a realisation with neither id nor derivation: %v; want a permanent error", err)
	}
}

func verifies(pk signature.PublicKey, fp, name, sig string) bool {
	data, err := base64.StdEncoding.DecodeString(sig)
	return err == nil && pk.Verify(fp, signature.Signature{Name: name, Data: data})
}
