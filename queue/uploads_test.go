package queue

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
)

// TestUploadRecords records an upload part by part, closes the file
// without a word (as a killed daemon leaves it) and opens it again: the
// record and every part committed are there, in part order; a part for an
// upload begun again is refused; a drop of an old id leaves the new one.
func TestUploadRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, nil)
	const name = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-big"
	if _, ok, err := q.LoadUpload(name); ok || err != nil {
		t.Fatalf("LoadUpload of nothing: ok %v, err %v", ok, err)
	}
	if err := q.BeginUpload(name, "id-1", []byte(`{"compression":"zstd"}`)); err != nil {
		t.Fatal(err)
	}
	want := []Part{
		{Num: 1, ETag: "e1", Size: 5 << 20, MD5: "m1"},
		{Num: 2, ETag: "e2", Size: 5 << 20, MD5: "m2"},
		{Num: 300, ETag: "e300", Size: 17, MD5: "m300"},
	}
	for _, i := range []int{2, 0, 1} { // out of order, as parallel sends finish
		if err := q.AddUploadPart(name, "id-1", want[i]); err != nil {
			t.Fatal(err)
		}
	}
	// Another upload beside it.
	if err := q.BeginUpload("/nix/store/other", "id-9", []byte("x")); err != nil {
		t.Fatal(err)
	}
	q.db.Close() // no orderly Close: what was committed is all there is

	q = open(t, path, nil)
	up, ok, err := q.LoadUpload(name)
	if err != nil || !ok {
		t.Fatalf("LoadUpload after reopening: ok %v, err %v", ok, err)
	}
	if up.ID != "id-1" || string(up.Record) != `{"compression":"zstd"}` || !reflect.DeepEqual(up.Parts, want) {
		t.Fatalf("after reopening: %+v, want id-1, the record and %+v", up, want)
	}
	all, err := q.Uploads()
	if err != nil || len(all) != 2 {
		t.Fatalf("Uploads: %d, %v; want 2", len(all), err)
	}

	// Begun again: the old parts are gone, and parts of the old id refused.
	if err := q.BeginUpload(name, "id-2", []byte(`{"compression":"xz"}`)); err != nil {
		t.Fatal(err)
	}
	if err := q.AddUploadPart(name, "id-1", Part{Num: 3, ETag: "late"}); !errors.Is(err, ErrUploadReplaced) {
		t.Fatalf("part of a replaced upload: %v, want ErrUploadReplaced", err)
	}
	if err := q.AddUploadPart(name, "id-2", Part{Num: 1, ETag: "n1", Size: 1}); err != nil {
		t.Fatal(err)
	}
	up, _, _ = q.LoadUpload(name)
	if up.ID != "id-2" || len(up.Parts) != 1 || up.Parts[0].ETag != "n1" {
		t.Fatalf("begun again: %+v", up)
	}
	// A drop naming the old id leaves the new upload; its own id drops it.
	if err := q.DropUpload(name, "id-1"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := q.LoadUpload(name); !ok {
		t.Fatal("a drop of the old id dropped the new upload")
	}
	if err := q.DropUpload(name, "id-2"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := q.LoadUpload(name); ok {
		t.Fatal("upload still recorded after its drop")
	}
	if err := q.AddUploadPart(name, "id-2", Part{Num: 2}); !errors.Is(err, ErrUploadReplaced) {
		t.Fatalf("part of a dropped upload: %v, want ErrUploadReplaced", err)
	}
	if err := q.DropUpload("/nix/store/other", ""); err != nil {
		t.Fatal(err)
	}
	if all, _ := q.Uploads(); len(all) != 0 {
		t.Fatalf("Uploads after dropping all: %+v", all)
	}
}

// TestUploadPartsShareCommits records parts from many goroutines at once:
// they share group commits, as hook hand-offs do.
func TestUploadPartsShareCommits(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), nil)
	if err := q.BeginUpload("p", "id", nil); err != nil {
		t.Fatal(err)
	}
	before := q.commits
	errs := make(chan error, 64)
	for i := 1; i <= 64; i++ {
		go func() { errs <- q.AddUploadPart("p", "id", Part{Num: i, ETag: "e", Size: 1}) }()
	}
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	up, _, _ := q.LoadUpload("p")
	if len(up.Parts) != 64 {
		t.Fatalf("%d parts recorded, want 64", len(up.Parts))
	}
	t.Logf("64 parts in %d commits", q.commits-before)
	if q.commits-before > 64 {
		t.Fatalf("%d commits for 64 parts", q.commits-before)
	}
}

// BenchmarkAddUploadPart is the cost of recording one part sent (one
// commit, with its fsyncs, on the test's temporary disk): what a
// resumable upload pays per 5 MiB part.
func BenchmarkAddUploadPart(b *testing.B) {
	q, err := Open(filepath.Join(b.TempDir(), "q.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	if err := q.BeginUpload("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-big", "id", make([]byte, 300)); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		p := Part{Num: i%10000 + 1, ETag: "0123456789abcdef0123456789abcdef", Size: 5 << 20, MD5: "0123456789abcdef0123456789abcdef"}
		if err := q.AddUploadPart("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-big", "id", p); err != nil {
			b.Fatal(err)
		}
	}
}
