package api

import (
	"time"

	"github.com/nixpush/nixpush/internal/version"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/nixpush/nixpush.sock"

// EnqueueRequest is the body of POST /v1/enqueue: store paths to push with
// their closures. DrvPath, the derivation that built them, names the build
// log to upload; alone (Nix 2.8.0 leaves OUT_PATHS empty) it also asks the
// daemon to push the derivation's outputs.
type EnqueueRequest struct {
	Paths   []string `json:"paths,omitempty"`
	DrvPath string   `json:"drv_path,omitempty"`
	// Recheck (nixpush push) checks the whole closures in the cache again,
	// whatever the daemon pushed or saw before, and uploads what is missing.
	Recheck bool `json:"recheck,omitempty"`
}

// EnqueueResponse answers POST /v1/enqueue once the queue has committed.
//
// The status code of an answer to /v1/enqueue says who keeps the paths:
//   - 200: the queue has committed them (fsynced); the daemon keeps them.
//   - 4xx but 408 and 429: a decision about the request itself (400: a path
//     is not a store path or not in the store; 403: the caller may not
//     enqueue; 413: too many paths). Final: sending it again cannot help.
//   - 5xx (503: the queue cannot write, such as a full state disk), 408, 429
//     and no answer at all: the daemon could not take the paths now. The
//     caller keeps them: nixpush-hook spools them, nixpush push reports it.
type EnqueueResponse struct {
	Added  int `json:"added"`
	Merged int `json:"merged"`
}

// Failure is a queue item that failed permanently.
type Failure struct {
	Path     string    `json:"path"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts"`
	Since    time.Time `json:"since"`
	// Class "store": failed for the store's configuration (credentials,
	// bucket, policy); queued again by itself once the store check passes.
	Class string `json:"class,omitempty"`
}

// Status answers GET /v1/status and GET /v1/wait.
type Status struct {
	Queued int `json:"queued"`
	Active int `json:"active"`
	Failed int `json:"failed"`
	Done   int `json:"done"`
	// Drained: every path handed over is accounted for: nothing queued,
	// active, held or spooled.
	Drained      bool       `json:"drained"`
	OldestQueued *time.Time `json:"oldest_queued,omitempty"`
	Failures     []Failure  `json:"failures,omitempty"`
	Uploaded     Uploaded   `json:"uploaded"`
	Store        string     `json:"store"`
	// Progress is the work since the queue was last drained.
	Progress Progress `json:"progress"`
	// StoreCheck is the outcome of the daemon's last check of the store.
	StoreCheck StoreCheck `json:"store_check"`
	// Version is the daemon's, so a bug report says what ran.
	Version version.Info `json:"version"`
	// QueueError is set while the queue cannot commit (a full or failing
	// state disk): "queue cannot write: ...".
	QueueError      string     `json:"queue_error,omitempty"`
	QueueErrorSince *time.Time `json:"queue_error_since,omitempty"`
	// Held counts paths the daemon could not queue (it answered 503) and
	// holds in memory to queue once commits succeed; HeldPaths lists the
	// first 100.
	Held      int      `json:"held"`
	HeldPaths []string `json:"held_paths,omitempty"`
	// Spooled counts spooled requests not yet imported.
	Spooled int `json:"spooled"`
	// GCSettings says how the daemon's settings do not fit those gc wrote
	// in its marker (its grace, --older-than, sweep window): until they
	// do, every push checks every path of its closures.
	GCSettings string `json:"gc_settings_problem,omitempty"`
	// Traffic is how requests to an S3 store go now (absent for file://).
	Traffic *Traffic `json:"store_traffic,omitempty"`
}

// Traffic is the state of the daemon's requests to its store: whether the
// store is throttling (answering 503 SlowDown or 429), at what concurrency
// the daemon runs because of it, and the upload rate against its cap.
type Traffic struct {
	// Throttling: a throttling answer came within the last minute.
	Throttling    bool       `json:"throttling"`
	Throttled     int64      `json:"throttled_total"` // throttling answers since start
	LastThrottled *time.Time `json:"last_throttled,omitempty"`
	// Concurrency is the limit on requests in flight now (it falls on
	// throttling and climbs back, up to MaxConcurrency); InFlight, those
	// in flight.
	Concurrency    int `json:"concurrency"`
	MaxConcurrency int `json:"max_concurrency"`
	InFlight       int `json:"in_flight"`
	// UploadRate is the bytes a second sent over the last seconds;
	// UploadRateCap the cap in force now (0: none).
	UploadRate    float64 `json:"upload_bytes_per_second"`
	UploadRateCap int64   `json:"upload_rate_cap"`
	// UploadRateSchedule is --max-upload-rate with its time-of-day
	// windows (absent without windows); the cap next changes at
	// UploadRateCapNextAt, to UploadRateCapNext (0: no cap).
	UploadRateSchedule  string     `json:"upload_rate_schedule,omitempty"`
	UploadRateCapNextAt *time.Time `json:"upload_rate_cap_next_at,omitempty"`
	UploadRateCapNext   int64      `json:"upload_rate_cap_next,omitempty"`
	Sent                int64      `json:"sent_bytes"` // request body bytes since start
}

// Progress is what the daemon has done of the closures it is pushing: the
// figures since the queue was last drained (Since), in paths and NAR bytes.
type Progress struct {
	Paths        int64      `json:"paths"`     // found missing from the cache: to upload
	NarBytes     int64      `json:"nar_bytes"` // their NAR bytes
	PathsDone    int64      `json:"paths_done"`
	NarBytesDone int64      `json:"nar_bytes_done"`
	Cached       int64      `json:"cached"` // found already in the cache
	Since        *time.Time `json:"since,omitempty"`
}

// StoreCheck is the daemon's last check of its store (endpoint,
// credentials, bucket, write, nix-cache-info). Before the first check ends,
// OK is false and CheckedAt absent.
type StoreCheck struct {
	OK        bool       `json:"ok"`
	Error     string     `json:"error,omitempty"` // the cause, e.g. "store unreachable: …"
	Fix       string     `json:"fix,omitempty"`
	CheckedAt *time.Time `json:"checked_at,omitempty"`
}

// Uploaded are the daemon's upload figures since it started.
type Uploaded struct {
	Paths     int64 `json:"paths"`
	NarBytes  int64 `json:"nar_bytes"`
	FileBytes int64 `json:"file_bytes"`
	Skipped   int64 `json:"skipped"`
	Requests  int64 `json:"requests"` // operations on the cache (HEAD, PUT, GET)
	Logs      int64 `json:"logs"`     // build logs uploaded
	Filtered  int64 `json:"filtered"` // paths left out by --exclude and --skip-signed-by
	// Realisations of content-addressed derivations' outputs uploaded.
	Realisations int64      `json:"realisations"`
	LastPush     *time.Time `json:"last_push,omitempty"`
	// NarBytesPerSecond is the upload rate over the last minute or so.
	NarBytesPerSecond float64   `json:"nar_bytes_per_second"`
	Since             time.Time `json:"since"` // when the daemon started
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// RetryRequest is the body of POST /v1/retry: re-queue failed items.
type RetryRequest struct {
	All   bool     `json:"all,omitempty"`
	Paths []string `json:"paths,omitempty"`
}

// RetryResponse answers POST /v1/retry.
type RetryResponse struct {
	Requeued int `json:"requeued"`
}
