package uploader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// Resumable uploads. A large NAR goes to an S3 store as a multipart
// upload; with a Journal (the daemon's queue) the upload is recorded as it
// goes: its id and what produces the same bytes again (store path, NAR
// hash and size, compression and its settings, part size) when it begins,
// then each part sent (number, ETag, size, MD5) once the store has it.
// After a restart or a crash the next push of the path finds the record,
// lists the parts the store holds for the upload, packs the NAR again and,
// for each part already there, checks that what it would send is what
// was sent (same size; the MD5 recorded, and the ETag where it is an MD5,
// as S3 and MinIO make it for unencrypted parts), sends only the rest,
// and completes. A record whose settings differ, a part that does not
// match, or an upload the store no longer has (NoSuchUpload) makes the
// upload start over, and the log says why in one line. Compression is
// deterministic (narpack.Compression.Settings), so the bytes do match when the
// settings do.
//
// An upload is aborted, and its record dropped, when the NAR cannot be
// packed or the store refuses it for good; one cut off by a stopping
// daemon or a failure that may pass is kept for the next attempt, and
// abandoned (aborted) once the daemon's queue has nothing left that could
// resume it (AbandonUploads).
//
// gc, which runs elsewhere without the queue, aborts multipart uploads
// older than its grace period. So that it leaves a resumable one alone,
// each upload recorded has a marker object layout.UploadMarkerKey(key, id),
// written when it begins and rewritten while the daemon keeps the record
// (when it resumes, and every HeartbeatEvery): gc keeps an upload whose
// marker it finds written within its grace period, and deletes markers
// older than that. A daemon down for longer than gc's grace loses its
// uploads to gc and starts them over (NoSuchUpload): nothing worse.

// Journal keeps the progress of resumable uploads where a restart or a
// crash leaves it: the daemon's queue. Names are store paths.
type Journal interface {
	// BeginUpload records upload id under name, replacing any other.
	BeginUpload(name, id string, record []byte) error
	// AddUploadPart records a part sent, durably, if name's upload is
	// still id.
	AddUploadPart(name, id string, p store.Part) error
	LoadUpload(name string) (JournalUpload, bool, error)
	// DropUpload forgets name's upload if it is still id ("" any).
	DropUpload(name, id string) error
	Uploads() ([]JournalUpload, error)
}

// JournalUpload is an upload as a Journal recorded it.
type JournalUpload struct {
	Name   string
	ID     string
	Record []byte
	Parts  []store.Part
}

// resumeVersion is the layout of uploadRecord, and of the part stream it
// describes; a record of another version starts over.
const resumeVersion = 1

// uploadRecord is what a resumable upload records when it begins.
type uploadRecord struct {
	Version     int       `json:"version"`
	Store       string    `json:"store"`
	Key         string    `json:"key"`
	Path        string    `json:"path"`
	NarHash     string    `json:"nar_hash"`
	NarSize     uint64    `json:"nar_size"`
	PartSize    int       `json:"part_size"`
	Compression string    `json:"compression"`
	Settings    string    `json:"settings"`
	Started     time.Time `json:"started"`
}

// differs says how r, recorded, differs from want ("" when it does not).
func (r uploadRecord) differs(want uploadRecord) string {
	switch {
	case r.Version != want.Version:
		return fmt.Sprintf("record version %d, this nixpush writes %d", r.Version, want.Version)
	case r.Store != want.Store:
		return fmt.Sprintf("store changed (%s -> %s)", r.Store, want.Store)
	case r.NarHash != want.NarHash || r.NarSize != want.NarSize:
		return fmt.Sprintf("NAR changed (%s, %d bytes -> %s, %d bytes)", r.NarHash, r.NarSize, want.NarHash, want.NarSize)
	case r.Compression != want.Compression:
		return fmt.Sprintf("compression changed (%s -> %s)", r.Compression, want.Compression)
	case r.Settings != want.Settings:
		return fmt.Sprintf("compression settings changed (%s -> %s)", r.Settings, want.Settings)
	case r.PartSize != want.PartSize:
		return fmt.Sprintf("part size changed (%d -> %d)", r.PartSize, want.PartSize)
	case r.Key != want.Key:
		return fmt.Sprintf("object key changed (%s -> %s)", r.Key, want.Key)
	}
	return ""
}

// HeartbeatEvery is how often the daemon rewrites the markers of the
// uploads it keeps; gc's grace period should be well above it.
const HeartbeatEvery = time.Hour

// errStartOver ends an attempt whose upload could not be resumed (a part
// that does not match); it has been aborted and the next attempt begins
// a new one.
var errStartOver = errors.New("resumable upload starts over")

// errUploadEnded closes the packer's pipe when the upload stopped reading.
var errUploadEnded = errors.New("upload ended")

// SetJournal makes large NAR uploads to an S3 store resumable, recorded
// in j. Call it before the first push.
func (u *Uploader) SetJournal(j Journal) {
	u.mu.Lock()
	u.journal = j
	u.mu.Unlock()
}

func (u *Uploader) getJournal() Journal {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.journal
}

// resumable is one attempt at a resumable upload of a NAR.
type resumable struct {
	u    *Uploader
	ms   store.Multipart
	j    Journal
	info nix.PathInfo
	want uploadRecord

	id         string // the upload, once open
	upKey      string // its object key
	resumed    bool
	have       map[int]storedPart // parts the store holds, to check rather than send
	listErr    error
	unrecorded bool // the journal could not record the upload

	// etags says whether the store's part ETags are the parts' MD5s
	// (etagsUnknown until the first part sent tells). Once they are, a
	// part sent needs no MD5 of its own: its ETag is one, and a resume
	// checks the part packed again against it. MD5 runs at a third of
	// SHA-256's speed here (295 against 904 MB/s on this machine's
	// cores), more than both of a NAR's hashes together.
	etags atomic.Int32
}

const (
	etagsUnknown int32 = iota
	etagsAreMD5
	etagsOpaque // SSE-KMS, SSE-C and some S3 clones: MD5 recorded per part
)

// storedPart is a part the store holds, with what the journal recorded
// of it (recorded: it did, and with the same ETag and size).
type storedPart struct {
	store.Part
	recorded bool
	conflict string // the journal recorded another ETag or size
}

// putResumable packs and uploads the NAR of info under key as a
// resumable multipart upload (one PUT when it compresses to less than a
// part).
func (u *Uploader) putResumable(ctx context.Context, ms store.Multipart, j Journal, info nix.PathInfo, key string) (packed, error) {
	c := u.cfg.Compression
	want := uploadRecord{
		Version: resumeVersion, Store: ms.String(), Key: key, Path: info.Path,
		NarHash: info.NarHash.Format(nixhash.NixBase32, true), NarSize: info.NarSize, PartSize: store.PartSize,
		Compression: string(c), Settings: c.Settings(info.NarSize),
	}
	u.mu.Lock()
	u.resuming[info.Path]++
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		if u.resuming[info.Path]--; u.resuming[info.Path] == 0 {
			delete(u.resuming, info.Path)
		}
		u.mu.Unlock()
	}()
	for round := 0; ; round++ {
		r := &resumable{u: u, ms: ms, j: j, info: info, want: want}
		p, err := r.run(ctx)
		if errors.Is(err, errStartOver) && round == 0 {
			continue
		}
		return p, err
	}
}

// run packs the NAR into the upload: one attempt.
func (r *resumable) run(ctx context.Context) (packed, error) {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	var p packed
	var perr error
	go func() {
		defer close(done)
		p, perr = pack(r.info, r.u.cfg.Compression, r.u.cfg.WriteNARListing, pw)
		pw.CloseWithError(perr)
	}()
	err := r.send(ctx, pr)
	pr.CloseWithError(errUploadEnded)
	<-done
	if err == nil && perr != nil {
		err = perr
	}
	if err != nil && r.id != "" && !errors.Is(err, errStartOver) {
		packFailed := perr != nil && !errors.Is(perr, errUploadEnded)
		if !packFailed && !r.unrecorded && !store.IsPermanent(err) && (ctx.Err() != nil || !errors.Is(err, store.ErrNoSuchUpload)) {
			// Cut off (stopping, or a failure that may pass): kept for
			// the next attempt, which resumes it.
			r.u.cfg.Log.Debug().Err(err).Str("path", r.info.Path).Str("upload_id", r.id).Msg("upload cut off; kept to resume")
		} else {
			r.discard(ctx)
		}
	}
	if err != nil {
		return packed{}, err
	}
	return p, nil
}

// recordKey is the object key a recorded upload was for.
func recordKey(ju JournalUpload, fallback string) string {
	var rec uploadRecord
	if json.Unmarshal(ju.Record, &rec) == nil && rec.Key != "" {
		return rec.Key
	}
	return fallback
}

// open resumes the upload recorded for the path, when it can, or begins
// a new one and records it.
func (r *resumable) open(ctx context.Context) error {
	ju, ok, err := r.j.LoadUpload(r.info.Path)
	if err != nil {
		r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Msg("read the record of an upload in progress; starting a new upload")
		ok = false
	}
	if ok {
		why := r.resume(ctx, ju)
		if why == "" {
			return nil
		}
		if why == "-" { // a failure that may pass: try again later
			return fmt.Errorf("resume upload of %s: list its parts: %w", r.info.Path, r.listErr)
		}
		r.u.cfg.Log.Warn().Str("path", r.info.Path).Str("upload_id", ju.ID).Str("reason", why).
			Msg("resumable upload starts over: " + why)
		r.u.mu.Lock()
		r.u.stats.StartedOver++
		r.u.mu.Unlock()
	}
	id, err := r.ms.NewUpload(ctx, r.want.Key, "application/x-nix-nar")
	if err != nil {
		return err
	}
	r.want.Started = r.u.cfg.Now().UTC()
	rec, _ := json.Marshal(r.want)
	r.id, r.upKey = id, r.want.Key
	if err := r.j.BeginUpload(r.info.Path, id, rec); err != nil {
		// A queue that cannot write (a full state disk) does not stop
		// the upload; it only cannot be resumed.
		r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Msg("record the upload: it goes on, but cannot be resumed after a restart")
		r.unrecorded = true
		return nil
	}
	r.u.writeMarker(ctx, r.want, id)
	return nil
}

// resume takes up the recorded upload ju: "" when it can, "-" when
// listing its parts failed in a way that may pass (r.listErr), else why
// not, having aborted and dropped it.
func (r *resumable) resume(ctx context.Context, ju JournalUpload) string {
	var rec uploadRecord
	why := ""
	if err := json.Unmarshal(ju.Record, &rec); err != nil {
		why = fmt.Sprintf("unreadable record (%v)", err)
		rec.Key = r.want.Key
	} else {
		why = rec.differs(r.want)
	}
	gone := false
	if why == "" {
		stored, err := r.ms.ListParts(ctx, rec.Key, ju.ID)
		switch {
		case errors.Is(err, store.ErrNoSuchUpload):
			gone = true
			why = "the store no longer has the upload (NoSuchUpload: aborted, completed or expired while the daemon was away)"
		case err != nil:
			r.listErr = err
			return "-"
		default:
			recorded := make(map[int]store.Part, len(ju.Parts))
			for _, p := range ju.Parts {
				recorded[p.Num] = p
			}
			r.have = make(map[int]storedPart, len(stored))
			var bytesThere int64
			for num, p := range stored {
				sp := storedPart{Part: p}
				if rp, ok := recorded[num]; ok {
					if rp.ETag == p.ETag && rp.Size == p.Size {
						sp.recorded, sp.MD5 = true, rp.MD5
					} else {
						sp.conflict = fmt.Sprintf("recorded ETag %s, %d bytes; the store has ETag %s, %d bytes", rp.ETag, rp.Size, p.ETag, p.Size)
					}
				}
				r.have[num] = sp
				bytesThere += p.Size
			}
			r.id, r.upKey, r.resumed = ju.ID, rec.Key, true
			r.u.cfg.Log.Info().Str("path", r.info.Path).Str("upload_id", ju.ID).Int("parts_in_store", len(stored)).
				Int("parts_recorded", len(ju.Parts)).Int64("bytes_in_store", bytesThere).Msg("resuming upload")
			r.u.mu.Lock()
			r.u.stats.Resumed++
			r.u.mu.Unlock()
			r.u.writeMarker(ctx, r.want, ju.ID) // a heartbeat
			return ""
		}
	}
	if !gone {
		if err := r.ms.Abort(ctx, rec.Key, ju.ID); err != nil {
			r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Msg("abort the upload that starts over (gc aborts it later)")
		}
	}
	r.u.deleteMarker(ctx, rec.Key, ju.ID)
	if err := r.j.DropUpload(r.info.Path, ju.ID); err != nil {
		r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Msg("forget the upload that starts over")
	}
	return why
}

// startOver aborts the upload after a part that does not match; the next
// attempt begins a new one.
func (r *resumable) startOver(ctx context.Context, why string) error {
	r.u.cfg.Log.Warn().Str("path", r.info.Path).Str("upload_id", r.id).Str("reason", why).
		Msg("resumable upload starts over: " + why)
	r.u.mu.Lock()
	r.u.stats.StartedOver++
	r.u.mu.Unlock()
	r.discard(ctx)
	return fmt.Errorf("upload %s: %s: %w", r.info.Path, why, errStartOver)
}

// discard aborts the upload, drops its record and deletes its marker.
func (r *resumable) discard(ctx context.Context) {
	if err := r.ms.Abort(ctx, r.upKey, r.id); err != nil {
		r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Str("upload_id", r.id).Msg("abort upload (gc aborts it later)")
	}
	if err := r.j.DropUpload(r.info.Path, r.id); err != nil {
		r.u.cfg.Log.Warn().Err(err).Str("path", r.info.Path).Msg("forget aborted upload")
	}
	r.u.deleteMarker(ctx, r.upKey, r.id)
	r.id = ""
}
