package api

import (
	"encoding/json"
	"testing"
)

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, req := range []EnqueueRequest{
		{},
		{Paths: []string{"/nix/store/00000000000000000000000000000000-a"}},
		{DrvPath: "/nix/store/00000000000000000000000000000000-a.drv"},
		{Paths: []string{"a", "b"}, DrvPath: "c"},
		{Paths: []string{"a"}, Recheck: true},
		{Recheck: true},
		{Paths: []string{"quote\" back\\ nl\n tab\t cr\r nul\x00 \x1f <>& \u2028\u2029 é 日本 \xff\xfe bad"}},
	} {
		checkJSON(t, req)
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("/nix/store/00000000000000000000000000000000-a", "x.drv")
	f.Add("\x00\xff\"\\<\u2028", "")
	f.Fuzz(func(t *testing.T, p, drv string) {
		checkJSON(t, EnqueueRequest{Paths: []string{p, drv}, DrvPath: drv})
	})
}

// checkJSON asserts that AppendJSON writes what encoding/json writes for
// the same fields, and that it reads back.
func checkJSON(t *testing.T, req EnqueueRequest) {
	t.Helper()
	type plain EnqueueRequest // no MarshalJSON method
	want, err := json.Marshal(plain(req))
	if err != nil {
		t.Fatal(err)
	}
	got := req.AppendJSON(nil)
	if string(got) != string(want) {
		t.Fatalf("AppendJSON(%+v)\n got %s\nwant %s", req, got, want)
	}
	var back EnqueueRequest
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("%s does not parse: %v", got, err)
	}
}
