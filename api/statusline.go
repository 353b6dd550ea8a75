package api

import (
	"strconv"
	"time"
)

// Line is the one-line summary shown by systemctl status (sd_notify
// STATUS=) and at the top of nixpush status:
// "3 queued, 1 uploading, 0 failed; 1234 paths, 5.6 GiB pushed; last push 12s ago",
// with the closures under way in paths and bytes ("1 uploading (12/300 paths,
// 45.0 MiB/300.0 MiB)"),
// after the cause while the store check fails ("store unreachable: …; 3 queued, …").
// A queue that cannot write leads even so: "queue cannot write: ...; 4 held
// unqueued, 2 spooled, ...".
func (st Status) Line(now time.Time) string {
	last := "never"
	if st.Uploaded.LastPush != nil {
		last = now.Sub(*st.Uploaded.LastPush).Round(time.Second).String() + " ago"
	}
	line := ""
	if !st.StoreCheck.OK && st.StoreCheck.Error != "" {
		line = st.StoreCheck.Error + "; "
	}
	if st.QueueError != "" {
		// First, so that a truncated systemctl status still shows it.
		line = st.QueueError + "; " + line
	}
	if st.GCSettings != "" {
		line += "settings do not fit gc's: " + st.GCSettings + "; "
	}
	if t := st.Traffic; t != nil && t.Throttling {
		line += "store throttling: " + strconv.Itoa(t.Concurrency) + "/" + strconv.Itoa(t.MaxConcurrency) + " requests at once; "
	}
	if st.Held > 0 {
		line += strconv.Itoa(st.Held) + " held unqueued, "
	}
	if st.Spooled > 0 {
		line += strconv.Itoa(st.Spooled) + " spooled, "
	}
	uploading := ""
	if p := st.Progress; !st.Drained && p.Since != nil && p.Paths > 0 {
		// The closures under way, in paths and bytes: queue items are roots.
		uploading = " (" + strconv.FormatInt(p.PathsDone, 10) + "/" + strconv.FormatInt(p.Paths, 10) + " paths, " +
			Bytes(p.NarBytesDone) + "/" + Bytes(p.NarBytes) + ")"
	}
	return line + strconv.Itoa(st.Queued) + " queued, " + strconv.Itoa(st.Active) + " uploading" + uploading + ", " +
		strconv.Itoa(st.Failed) + " failed; " + strconv.FormatInt(st.Uploaded.Paths, 10) + " paths, " +
		Bytes(st.Uploaded.NarBytes) + " pushed; last push " + last
}

// Bytes formats a byte count for people: 512 B, 1.5 KiB, 5.6 GiB.
// (strconv, not fmt: this package is linked into nixpush-hook.)
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + string("KMGTPE"[exp]) + "iB"
}
