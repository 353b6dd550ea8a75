package layout

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/nixpush/nixpush/nix"
)

// Root is the body of a root's object (RootKey): the last push of a path
// handed to a daemon, rewritten at every push once its .narinfo is in the
// cache.
type Root struct {
	Path     string    `json:"path"`
	PushedAt time.Time `json:"pushed_at"`
	Host     string    `json:"host,omitempty"`
}

// RootBatch is the body of a record of several roots pushed together
// (NewRootBatchKey): never rewritten; gc deletes it once it has expired.
type RootBatch struct {
	Paths    []string  `json:"paths"`
	PushedAt time.Time `json:"pushed_at"`
	Host     string    `json:"host,omitempty"`
}

// Pin keeps a path's closure in the cache whatever its age. Its name is
// its key's (PinKey), not in its body.
type Pin struct {
	Name     string    `json:"-"`
	Path     string    `json:"path"`
	PinnedAt time.Time `json:"pinned_at"`
}

// Sweep is the body of gc's marker (SweepKey): it may delete from ListedAt
// until Deadline, never after; once it has made its last deletion it says
// so in FinishedAt and leaves the marker up. A daemon that wrote a
// .narinfo relying on what it saw before FinishedAt (or while the sweep
// runs, after the deadline) re-checks the references; one that finds no
// marker, or a sweep that finished before its sightings, need not (see
// the uploader package's doc).
type Sweep struct {
	ListedAt   time.Time `json:"listed_at"`
	Deadline   time.Time `json:"deadline"`
	Host       string    `json:"host,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Kind is "gc" or "repair" (verify --repair): what swept.
	Kind string `json:"kind,omitempty"`
	// The sweep's settings, for daemons to check theirs against: gc's
	// --grace, --older-than and --sweep-window, in seconds; 0 when the
	// writer did not say (an older gc, or repair, which keeps no grace).
	GraceSeconds     int64 `json:"grace_s,omitempty"`
	OlderThanSeconds int64 `json:"older_than_s,omitempty"`
	WindowSeconds    int64 `json:"window_s,omitempty"`
}

// Sweeper is what swept: Kind, or "gc" when the marker does not say.
func (s *Sweep) Sweeper() string {
	if s.Kind == "" {
		return "gc"
	}
	return s.Kind
}

// UploadMarker is the body of an upload's marker (UploadMarkerKey),
// rewritten as a heartbeat while a daemon keeps the upload to resume: gc
// leaves the upload alone while the marker's last write is within its
// grace period.
type UploadMarker struct {
	Key       string    `json:"key"`
	UploadID  string    `json:"upload_id"`
	Path      string    `json:"path"`
	Host      string    `json:"host"`
	StartedAt time.Time `json:"started_at"`
}

// Marshal is the body of a record as nixpush writes it: compact JSON and
// a newline.
func Marshal(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

var pinName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// CheckPinName refuses a name that cannot be an object name of its own.
func CheckPinName(name string) error {
	if !pinName.MatchString(name) {
		return fmt.Errorf("pin name %q: use letters, digits and . _ + - (up to 128), starting with a letter or digit", name)
	}
	return nil
}

// ParsePin reads the pin name from data, its object's body; a pin without
// a time was pinned when its object was last written (mod).
func ParsePin(name string, data []byte, mod time.Time) (Pin, error) {
	var p Pin
	if err := json.Unmarshal(data, &p); err != nil || nix.StoreHashPart(p.Path) == "" {
		return Pin{}, fmt.Errorf("pin %s%s is not a pin record (%v); fix it or remove it with nixpush unpin %s", PinPrefix, name, err, name)
	}
	p.Name = name
	if p.PinnedAt.IsZero() {
		p.PinnedAt = mod
	}
	return p, nil
}

// ParseRoot reads the root record key from data; false when it is not one
// of the path its key names. A root without a time was pushed when its
// object was last written (mod).
func ParseRoot(key string, data []byte, mod time.Time) (Root, bool) {
	var r Root
	if err := json.Unmarshal(data, &r); err != nil || nix.StoreHashPart(r.Path) != strings.TrimPrefix(key, RootPrefix) {
		return Root{}, false
	}
	if r.PushedAt.IsZero() {
		r.PushedAt = mod
	}
	return r, true
}

// ParseRootBatch reads a batch root record from data; false when it is
// not one. A batch without a time was pushed when its object was last
// written (mod).
func ParseRootBatch(data []byte, mod time.Time) (RootBatch, bool) {
	var r RootBatch
	if err := json.Unmarshal(data, &r); err != nil {
		return RootBatch{}, false
	}
	if r.PushedAt.IsZero() {
		r.PushedAt = mod
	}
	return r, true
}

// ParseSweep reads gc's marker from data; one without a deadline is not
// a marker.
func ParseSweep(data []byte) (Sweep, error) {
	var s Sweep
	err := json.Unmarshal(data, &s)
	if err == nil && s.Deadline.IsZero() {
		err = errors.New("no deadline")
	}
	return s, err
}
