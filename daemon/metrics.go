package daemon

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves Prometheus metrics, read from the same figures as
// /v1/status at each scrape.
func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&statusCollector{d: d})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

var (
	descItems = prometheus.NewDesc("nixpush_queue_items", "Items in the queue by state (done: pushed since the queue was created).",
		[]string{"state"}, nil)
	descOldest = prometheus.NewDesc("nixpush_queue_oldest_queued_age_seconds", "Age of the oldest queued item; 0 when none is queued.", nil, nil)
	descPaths  = prometheus.NewDesc("nixpush_uploaded_paths_total", "Store paths uploaded since the daemon started.", nil, nil)
	descNAR    = prometheus.NewDesc("nixpush_uploaded_nar_bytes_total", "NAR bytes of the uploaded paths.", nil, nil)
	descFile   = prometheus.NewDesc("nixpush_uploaded_file_bytes_total", "Compressed bytes uploaded.", nil, nil)
	descSkip   = prometheus.NewDesc("nixpush_skipped_paths_total", "Paths found already in the cache.", nil, nil)
	descFilter = prometheus.NewDesc("nixpush_filtered_paths_total", "Paths left out by --exclude and --skip-signed-by.", nil, nil)
	descLogs   = prometheus.NewDesc("nixpush_uploaded_build_logs_total", "Build logs uploaded to log/<drv>.", nil, nil)
	descReal   = prometheus.NewDesc("nixpush_uploaded_realisations_total", "Realisations of content-addressed derivations uploaded.", nil, nil)
	descReq    = prometheus.NewDesc("nixpush_store_requests_total", "Operations on the cache (existence checks, listings, uploads).", nil, nil)
	descLast   = prometheus.NewDesc("nixpush_last_push_timestamp_seconds", "When a path was last uploaded (Unix time); 0 before the first.", nil, nil)
	descRate   = prometheus.NewDesc("nixpush_upload_nar_bytes_per_second", "Upload rate over the last minute or so, in NAR bytes.", nil, nil)
	descStore  = prometheus.NewDesc("nixpush_store_ok", "1 when the last check of the store passed (reachable, credentials, bucket, write, nix-cache-info), else 0.", nil, nil)
	descCheck  = prometheus.NewDesc("nixpush_store_check_timestamp_seconds", "When the store was last checked (Unix time); 0 before the first check ends.", nil, nil)
	descQOK    = prometheus.NewDesc("nixpush_queue_write_ok", "1 when the queue's last commit succeeded, 0 while it cannot write (a full or failing state disk).", nil, nil)
	descQFail  = prometheus.NewDesc("nixpush_queue_write_failures_total", "Queue commits that failed since the daemon started.", nil, nil)
	descHeld   = prometheus.NewDesc("nixpush_held_paths", "Paths the queue could not take, held in memory until it can.", nil, nil)
	descSpool  = prometheus.NewDesc("nixpush_spooled_requests", "Spooled requests not yet imported.", nil, nil)
	descThrot  = prometheus.NewDesc("nixpush_store_throttling", "1 while the store throttles (a 503 SlowDown or 429 within the last minute), else 0.", nil, nil)
	descThrots = prometheus.NewDesc("nixpush_store_throttled_total", "Throttling answers (503 SlowDown, 429) from the store; each is retried after a backoff, none fails a path.", nil, nil)
	descConc   = prometheus.NewDesc("nixpush_store_concurrency_limit", "Requests the daemon lets be in flight to the store now: halved on throttling, climbing back as requests succeed.", nil, nil)
	descInFl   = prometheus.NewDesc("nixpush_store_requests_in_flight", "Requests to the store in flight now.", nil, nil)
	descSent   = prometheus.NewDesc("nixpush_store_sent_bytes_total", "Request body bytes sent to the store.", nil, nil)
	descCap    = prometheus.NewDesc("nixpush_upload_rate_cap_bytes_per_second", "The upload bandwidth cap in force now (--max-upload-rate, by its time-of-day schedule); 0 when none.", nil, nil)
	descCapNxt = prometheus.NewDesc("nixpush_upload_rate_cap_next_change_timestamp_seconds", "When the upload cap next changes by its schedule (Unix time); 0 when it never does.", nil, nil)
	descCapNxV = prometheus.NewDesc("nixpush_upload_rate_cap_next_bytes_per_second", "The upload cap from its next change on; 0 when none (or no change comes).", nil, nil)
	descSendRt = prometheus.NewDesc("nixpush_store_sent_bytes_per_second", "Request body bytes a second sent to the store over the last 4 whole seconds (what the upload cap holds).", nil, nil)
	descGCFit  = prometheus.NewDesc("nixpush_gc_settings_ok", "0 while the daemon's --trust-cache-for or --max-sweep-wait does not fit the grace, --older-than or sweep window gc wrote in its marker (every push then checks every path), else 1.", nil, nil)
)

type statusCollector struct{ d *Daemon }

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descItems, descOldest, descPaths, descNAR, descFile, descSkip, descFilter, descLogs, descReal, descReq, descLast, descRate, descStore, descCheck, descQOK, descQFail, descHeld, descSpool, descGCFit, descThrot, descThrots, descConc, descInFl, descSent, descCap, descCapNxt, descCapNxV, descSendRt} {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.d.status()
	for state, n := range map[string]int{"queued": st.Queued, "active": st.Active, "failed": st.Failed, "done": st.Done} {
		ch <- prometheus.MustNewConstMetric(descItems, prometheus.GaugeValue, float64(n), state)
	}
	var oldest float64
	if st.OldestQueued != nil {
		oldest = time.Since(*st.OldestQueued).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, oldest)
	u := st.Uploaded
	ch <- prometheus.MustNewConstMetric(descPaths, prometheus.CounterValue, float64(u.Paths))
	ch <- prometheus.MustNewConstMetric(descNAR, prometheus.CounterValue, float64(u.NarBytes))
	ch <- prometheus.MustNewConstMetric(descFile, prometheus.CounterValue, float64(u.FileBytes))
	ch <- prometheus.MustNewConstMetric(descSkip, prometheus.CounterValue, float64(u.Skipped))
	ch <- prometheus.MustNewConstMetric(descFilter, prometheus.CounterValue, float64(u.Filtered))
	ch <- prometheus.MustNewConstMetric(descLogs, prometheus.CounterValue, float64(u.Logs))
	ch <- prometheus.MustNewConstMetric(descReal, prometheus.CounterValue, float64(u.Realisations))
	ch <- prometheus.MustNewConstMetric(descReq, prometheus.CounterValue, float64(u.Requests))
	var last float64
	if u.LastPush != nil {
		last = float64(u.LastPush.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descLast, prometheus.GaugeValue, last)
	ch <- prometheus.MustNewConstMetric(descRate, prometheus.GaugeValue, u.NarBytesPerSecond)
	var ok, checked float64
	if st.StoreCheck.OK {
		ok = 1
	}
	if st.StoreCheck.CheckedAt != nil {
		checked = float64(st.StoreCheck.CheckedAt.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descStore, prometheus.GaugeValue, ok)
	ch <- prometheus.MustNewConstMetric(descCheck, prometheus.GaugeValue, checked)
	qerr, _, failures, _ := c.d.qhealth.state()
	qok := 1.0
	if qerr != nil {
		qok = 0
	}
	ch <- prometheus.MustNewConstMetric(descQOK, prometheus.GaugeValue, qok)
	ch <- prometheus.MustNewConstMetric(descQFail, prometheus.CounterValue, float64(failures))
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(st.Held))
	ch <- prometheus.MustNewConstMetric(descSpool, prometheus.GaugeValue, float64(st.Spooled))
	fit := 1.0
	if st.GCSettings != "" {
		fit = 0
	}
	ch <- prometheus.MustNewConstMetric(descGCFit, prometheus.GaugeValue, fit)
	if t := st.Traffic; t != nil {
		throttling := 0.0
		if t.Throttling {
			throttling = 1
		}
		ch <- prometheus.MustNewConstMetric(descThrot, prometheus.GaugeValue, throttling)
		ch <- prometheus.MustNewConstMetric(descThrots, prometheus.CounterValue, float64(t.Throttled))
		ch <- prometheus.MustNewConstMetric(descConc, prometheus.GaugeValue, float64(t.Concurrency))
		ch <- prometheus.MustNewConstMetric(descInFl, prometheus.GaugeValue, float64(t.InFlight))
		ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(t.Sent))
		ch <- prometheus.MustNewConstMetric(descCap, prometheus.GaugeValue, float64(t.UploadRateCap))
		var next float64
		if t.UploadRateCapNextAt != nil {
			next = float64(t.UploadRateCapNextAt.Unix())
		}
		ch <- prometheus.MustNewConstMetric(descCapNxt, prometheus.GaugeValue, next)
		ch <- prometheus.MustNewConstMetric(descCapNxV, prometheus.GaugeValue, float64(t.UploadRateCapNext))
		ch <- prometheus.MustNewConstMetric(descSendRt, prometheus.GaugeValue, t.UploadRate)
	}
}
