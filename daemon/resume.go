package daemon

import (
	"context"
	"time"

	"github.com/nixpush/nixpush/queue"
	"github.com/nixpush/nixpush/store"
	"github.com/nixpush/nixpush/uploader"
)

// queueJournal records the uploader's resumable uploads in the queue.
type queueJournal struct{ q *queue.Queue }

func (j queueJournal) BeginUpload(name, id string, record []byte) error {
	return j.q.BeginUpload(name, id, record)
}

func (j queueJournal) AddUploadPart(name, id string, p store.Part) error {
	return j.q.AddUploadPart(name, id, queue.Part(p))
}

func (j queueJournal) LoadUpload(name string) (uploader.JournalUpload, bool, error) {
	up, ok, err := j.q.LoadUpload(name)
	return journalUpload(up), ok, err
}

func (j queueJournal) DropUpload(name, id string) error { return j.q.DropUpload(name, id) }

func (j queueJournal) Uploads() ([]uploader.JournalUpload, error) {
	ups, err := j.q.Uploads()
	out := make([]uploader.JournalUpload, len(ups))
	for i, up := range ups {
		out[i] = journalUpload(up)
	}
	return out, err
}

func journalUpload(up queue.Upload) uploader.JournalUpload {
	ju := uploader.JournalUpload{Name: up.Name, ID: up.ID, Record: up.Record, Parts: make([]store.Part, len(up.Parts))}
	for i, p := range up.Parts {
		ju.Parts[i] = store.Part(p)
	}
	return ju
}

// keepUploads looks after the resumable uploads the queue records: at
// start and every uploader.HeartbeatEvery it rewrites their markers, so
// that gc leaves them alone, or, when nothing is queued or in flight that
// could resume them, aborts them (see abandonUploads).
func (d *Daemon) keepUploads(ctx context.Context) error {
	for {
		if d.queue.Pending() == 0 {
			d.abandonUploads(ctx)
		} else if err := d.up.HeartbeatUploads(ctx); err != nil {
			d.log.Warn().Err(err).Msg("heartbeat of resumable uploads")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(uploader.HeartbeatEvery):
		}
	}
}

// abandonUploads aborts the uploads the queue records once nothing is
// queued or in flight: an item done, failed for good or dropped leaves
// none of its uploads to resume.
func (d *Daemon) abandonUploads(ctx context.Context) {
	if n, err := d.up.AbandonUploads(ctx); err != nil && ctx.Err() == nil {
		d.log.Warn().Err(err).Int("aborted", n).Msg("abort abandoned uploads (gc aborts them later)")
	}
}
