package hook

import (
	"fmt"
	"time"
)

// Line is the one-line summary shown by systemctl status (sd_notify
// STATUS=) and at the top of nixpush status:
// "3 queued, 1 uploading, 0 failed; 1234 paths, 5.6 GiB pushed; last push 12s ago".
func (st Status) Line(now time.Time) string {
	last := "never"
	if st.Uploaded.LastPush != nil {
		last = now.Sub(*st.Uploaded.LastPush).Round(time.Second).String() + " ago"
	}
	return fmt.Sprintf("%d queued, %d uploading, %d failed; %d paths, %s pushed; last push %s",
		st.Queued, st.Active, st.Failed, st.Uploaded.Paths, Bytes(st.Uploaded.NarBytes), last)
}

// Bytes formats a byte count for people: 512 B, 1.5 KiB, 5.6 GiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
