package queue

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
)

// Uploads in progress: what a resumable upload (a large NAR's multipart
// upload) has sent so far, kept so that a daemon restarted or killed
// mid-upload sends only the rest. The queue does not interpret them: an
// upload is a name (the uploader's: the store path), an id (the store's
// upload id), the owner's record (opaque bytes: what is needed to produce
// the same bytes again) and the parts sent, each with the tag and size
// the store answered.
//
// Layout: bucket "uploads" holds one bucket per name, with "id", "record"
// and one key per part (its number, 4 bytes big-endian) whose value is
// the part's JSON. Recording a part writes one small key, not the whole
// list again, and shares its commit with whatever else commits at that
// moment (see group).

var (
	bucketUploads = []byte("uploads")
	keyUploadID   = []byte("id")
	keyRecord     = []byte("record")
)

// Part is one part of an upload, as sent.
type Part struct {
	Num  int    `json:"-"`
	ETag string `json:"etag"`          // as the store answered, without quotes
	Size int64  `json:"size"`          // bytes
	MD5  string `json:"md5,omitempty"` // hex MD5 of the bytes sent
}

// Upload is an upload in progress.
type Upload struct {
	Name   string
	ID     string
	Record []byte
	Parts  []Part // in part number order
}

// ErrUploadReplaced reports a part recorded for an upload that is no
// longer the one recorded under its name (dropped, or begun again).
var ErrUploadReplaced = errors.New("the upload is no longer recorded (dropped or begun again)")

// BeginUpload records a new upload under name, replacing any upload
// recorded there, and returns once it is committed.
func (q *Queue) BeginUpload(name, id string, record []byte) error {
	err := q.group(func(tx *bbolt.Tx) error {
		ups, err := tx.CreateBucketIfNotExists(bucketUploads)
		if err != nil {
			return err
		}
		if ups.Bucket([]byte(name)) != nil {
			if err := ups.DeleteBucket([]byte(name)); err != nil {
				return err
			}
		}
		b, err := ups.CreateBucket([]byte(name))
		if err != nil {
			return err
		}
		if err := b.Put(keyUploadID, []byte(id)); err != nil {
			return err
		}
		return b.Put(keyRecord, record)
	})
	if err != nil {
		return fmt.Errorf("queue: record upload of %s: %w", name, err)
	}
	return nil
}

// AddUploadPart records a part sent for the upload id of name and
// returns once it is committed; ErrUploadReplaced if name's upload is no
// longer id.
func (q *Queue) AddUploadPart(name, id string, p Part) error {
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	err = q.group(func(tx *bbolt.Tx) error {
		b := uploadBucket(tx, name)
		if b == nil || string(b.Get(keyUploadID)) != id {
			return ErrUploadReplaced
		}
		return b.Put(partKey(p.Num), v)
	})
	if err != nil {
		return fmt.Errorf("queue: record part %d of the upload of %s: %w", p.Num, name, err)
	}
	return nil
}

// LoadUpload returns the upload recorded under name, if any.
func (q *Queue) LoadUpload(name string) (Upload, bool, error) {
	var up Upload
	var ok bool
	err := q.db.View(func(tx *bbolt.Tx) error {
		b := uploadBucket(tx, name)
		if b == nil {
			return nil
		}
		var err error
		up, err = readUpload(name, b)
		ok = err == nil
		return err
	})
	if err != nil {
		return Upload{}, false, fmt.Errorf("queue: upload of %s: %w", name, err)
	}
	return up, ok, nil
}

// Uploads returns every upload recorded, parts included.
func (q *Queue) Uploads() ([]Upload, error) {
	var out []Upload
	err := q.db.View(func(tx *bbolt.Tx) error {
		ups := tx.Bucket(bucketUploads)
		if ups == nil {
			return nil
		}
		return ups.ForEachBucket(func(k []byte) error {
			up, err := readUpload(string(k), ups.Bucket(k))
			if err != nil {
				return err
			}
			out = append(out, up)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("queue: uploads: %w", err)
	}
	return out, nil
}

// DropUpload forgets the upload recorded under name if it is still id
// (any, when id is ""): one begun again since is left alone.
func (q *Queue) DropUpload(name, id string) error {
	err := q.group(func(tx *bbolt.Tx) error {
		ups := tx.Bucket(bucketUploads)
		b := uploadBucket(tx, name)
		if b == nil || (id != "" && string(b.Get(keyUploadID)) != id) {
			return nil
		}
		return ups.DeleteBucket([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("queue: drop upload of %s: %w", name, err)
	}
	return nil
}

func uploadBucket(tx *bbolt.Tx, name string) *bbolt.Bucket {
	ups := tx.Bucket(bucketUploads)
	if ups == nil {
		return nil
	}
	return ups.Bucket([]byte(name))
}

func readUpload(name string, b *bbolt.Bucket) (Upload, error) {
	up := Upload{Name: name, ID: string(b.Get(keyUploadID)), Record: append([]byte(nil), b.Get(keyRecord)...)}
	err := b.ForEach(func(k, v []byte) error {
		if len(k) != 4 {
			return nil // id, record
		}
		p := Part{Num: int(binary.BigEndian.Uint32(k))}
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("part %d: %w", p.Num, err)
		}
		up.Parts = append(up.Parts, p)
		return nil
	})
	return up, err
}

func partKey(num int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(num)) }
