package uploader

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

// writeMarker writes (or rewrites, as a heartbeat) the marker of upload id.
// A marker that cannot be written costs at worst the upload, if gc runs.
func (u *Uploader) writeMarker(ctx context.Context, rec uploadRecord, id string) {
	m, _ := json.Marshal(layout.UploadMarker{Key: rec.Key, UploadID: id, Path: rec.Path, Host: u.cfg.Host, StartedAt: rec.Started})
	m = append(m, '\n')
	key := layout.UploadMarkerKey(rec.Key, id)
	if err := u.counted.Put(ctx, key, bytes.NewReader(m), int64(len(m)), "application/json"); err != nil {
		u.cfg.Log.Warn().Err(err).Str("marker", key).Msg("write the marker of a resumable upload (gc may abort it after its grace period)")
	}
}

// deleteMarker removes upload id's marker; one left behind is deleted by
// gc once older than its grace period.
func (u *Uploader) deleteMarker(ctx context.Context, key, id string) {
	d, ok := store.As[store.Deleter](u.counted)
	if !ok {
		return
	}
	if err := d.Delete(context.WithoutCancel(ctx), layout.UploadMarkerKey(key, id)); err != nil {
		u.cfg.Log.Debug().Err(err).Str("marker", layout.UploadMarkerKey(key, id)).Msg("delete the marker of a finished upload (gc deletes it later)")
	}
}

// HeartbeatUploads rewrites the marker of every upload the journal keeps,
// so that gc leaves them alone while the daemon means to resume them.
func (u *Uploader) HeartbeatUploads(ctx context.Context) error {
	j := u.getJournal()
	if j == nil {
		return nil
	}
	ups, err := j.Uploads()
	if err != nil {
		return err
	}
	for _, ju := range ups {
		var rec uploadRecord
		if json.Unmarshal(ju.Record, &rec) != nil || rec.Key == "" {
			continue
		}
		u.writeMarker(ctx, rec, ju.ID)
	}
	return nil
}

// AbandonUploads aborts every upload the journal keeps that no push is
// resuming now, and forgets it: the daemon calls it when its queue has
// nothing queued or in flight, so nothing could resume them. It returns
// how many it abandoned.
func (u *Uploader) AbandonUploads(ctx context.Context) (int, error) {
	j := u.getJournal()
	ms, ok := store.As[store.Multipart](u.cfg.Store)
	if j == nil || !ok {
		return 0, nil
	}
	ups, err := j.Uploads()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ju := range ups {
		u.mu.Lock()
		busy := u.resuming[ju.Name] > 0
		u.mu.Unlock()
		if busy {
			continue
		}
		key := recordKey(ju, "")
		if key != "" {
			if err := ms.Abort(ctx, key, ju.ID); err != nil {
				return n, err
			}
			u.deleteMarker(ctx, key, ju.ID)
		}
		if err := j.DropUpload(ju.Name, ju.ID); err != nil {
			return n, err
		}
		u.cfg.Log.Info().Str("path", ju.Name).Str("upload_id", ju.ID).Int("parts", len(ju.Parts)).
			Msg("abandoned upload aborted: nothing queued would resume it")
		n++
	}
	return n, nil
}
