package nix

import (
	"errors"
	"strings"
	"testing"
)

func TestFingerprintSortsReferences(t *testing.T) {
	infos, err := ParsePathInfoJSON([]byte(`[{"path":"/nix/store/vfwyf7lvpcxwdyfjvv2rxs8qad214b3j-t2","narHash":"sha256:1qfnjgip8m9dbqdbj5knn5iy85czgv742hdn04qms0bfql346s3x","narSize":168,
		"references":["/nix/store/vfwyf7lvpcxwdyfjvv2rxs8qad214b3j-t2","/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"]}]`), DefaultStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	want := "1;/nix/store/vfwyf7lvpcxwdyfjvv2rxs8qad214b3j-t2;sha256:1qfnjgip8m9dbqdbj5knn5iy85czgv742hdn04qms0bfql346s3x;168;" +
		"/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1,/nix/store/vfwyf7lvpcxwdyfjvv2rxs8qad214b3j-t2"
	if got := Fingerprint(infos[0]); got != want {
		t.Fatalf("fingerprint\n got %s\nwant %s", got, want)
	}
	infos[0].References = nil
	if got := Fingerprint(infos[0]); !strings.HasSuffix(got, ";168;") {
		t.Fatalf("fingerprint without references must end in ';': %s", got)
	}
}

func TestParsePathInfoJSON(t *testing.T) {
	const p = "/nix/store/vfwyf7lvpcxwdyfjvv2rxs8qad214b3j-t2"
	const r = "/nix/store/84iphvw7rs2syhrdmwicjk2726dprxcw-t1"
	for _, tc := range []struct {
		name, json string
		invalid    bool
		deriver    string
		ca         string
	}{
		{name: "nix 2.8 array, SRI hash", deriver: "/nix/store/wzvpwdp3lwy2xqb13ghpmdzl9slz8nz3-t2.drv",
			json: `[{"path":"` + p + `","narHash":"sha256-fWhDBsVuAV0xAbZBQc5+nxXkY7F2FrkaXi1VdOOT1uE=","narSize":168,"references":["` + r + `"],"deriver":"/nix/store/wzvpwdp3lwy2xqb13ghpmdzl9slz8nz3-t2.drv","registrationTime":1795544591,"ultimate":true}]`},
		{name: "lix array, nix32 hash, ca", ca: "fixed:r:sha256:1qfnjgip8m9dbqdbj5knn5iy85czgv742hdn04qms0bfql346s3x",
			json: `[{"path":"` + p + `","narHash":"sha256:1qfnjgip8m9dbqdbj5knn5iy85czgv742hdn04qms0bfql346s3x","narSize":168,"references":["` + r + `"],"ca":"fixed:r:sha256:1qfnjgip8m9dbqdbj5knn5iy85czgv742hdn04qms0bfql346s3x","signatures":["a:b"]}]`},
		{name: "nix 2.19+ map with nulls",
			json: `{"` + p + `":{"narHash":"sha256-fWhDBsVuAV0xAbZBQc5+nxXkY7F2FrkaXi1VdOOT1uE=","narSize":168,"references":["` + r + `"],"deriver":null,"ca":null,"signatures":[]}}`},
		{name: "nix 2.19+ map, invalid path", invalid: true, json: `{"` + p + `":null}`},
		{name: "array with valid=false", invalid: true, json: `[{"path":"` + p + `","valid":false}]`},
		{name: "basename references", json: `{"` + p + `":{"narHash":"sha256-fWhDBsVuAV0xAbZBQc5+nxXkY7F2FrkaXi1VdOOT1uE=","narSize":168,"references":["84iphvw7rs2syhrdmwicjk2726dprxcw-t1"]}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			infos, err := ParsePathInfoJSON([]byte(tc.json), DefaultStoreDir)
			if tc.invalid {
				if !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("err = %v; want ErrInvalidPath", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(infos) != 1 {
				t.Fatalf("got %d infos", len(infos))
			}
			info := infos[0]
			if info.Path != p || info.NarSize != 168 || len(info.References) != 1 || info.References[0] != r {
				t.Fatalf("got %+v", info)
			}
			if Fingerprint(info) != "1;"+p+";sha256:1qfnjgip8m9dbqdbj5knn5iy85czgv742hdn04qms0bfql346s3x;168;"+r {
				t.Fatalf("fingerprint %s", Fingerprint(info))
			}
			if info.Deriver != tc.deriver || info.CA != tc.ca {
				t.Fatalf("deriver %q ca %q", info.Deriver, info.CA)
			}
		})
	}
	for _, bad := range []string{``, `nope`, `[{"path":"/etc/passwd","narHash":"sha256:x","narSize":1}]`, `[{"path":"` + p + `","narHash":"md5:x","narSize":1}]`} {
		if _, err := ParsePathInfoJSON([]byte(bad), DefaultStoreDir); err == nil {
			t.Errorf("ParsePathInfoJSON(%q) accepted", bad)
		}
	}
}
