package daemon

import (
	"sync"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/uploader"
)

// session is the work since the queue was last drained: what the clients
// waiting on it (push --wait, wait) show progress of. It opens at the first
// lease after a drained queue and closes when the queue drains again; its
// figures stay readable until the next one opens.
type session struct {
	mu     sync.Mutex
	isOpen bool
	since  time.Time
	base   uploader.Stats
}

func (s *session) open(st uploader.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.isOpen {
		s.isOpen, s.since, s.base = true, time.Now(), st
	}
}

func (s *session) close() {
	s.mu.Lock()
	s.isOpen = false
	s.mu.Unlock()
}

// progress is the session's share of the uploader's cumulative figures.
func (s *session) progress(st uploader.Stats) api.Progress {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.since.IsZero() {
		return api.Progress{}
	}
	since := s.since
	return api.Progress{
		Paths: st.Planned - s.base.Planned, NarBytes: st.PlannedNarBytes - s.base.PlannedNarBytes,
		PathsDone: st.Paths - s.base.Paths, NarBytesDone: st.NarBytes - s.base.NarBytes,
		Cached: st.Skipped - s.base.Skipped, Since: &since,
	}
}
