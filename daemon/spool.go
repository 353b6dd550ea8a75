package daemon

import (
	"context"
	"encoding/json"
	"github.com/nixpush/nixpush/spool"
	"os"
	"time"
)

// importSpoolLoop imports spooled requests at start and then every
// SpoolInterval, until ctx is done. Each round first checks whether a queue
// that could not write can again, and queues the paths held meanwhile.
func (d *Daemon) importSpoolLoop(ctx context.Context) error {
	t := time.NewTicker(d.cfg.SpoolInterval)
	defer t.Stop()
	for {
		d.recoverQueue(ctx)
		d.importSpool(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// importSpool queues every complete spool file and removes it once the
// queue has committed its paths. A file that cannot be read as a request is
// renamed *.bad and kept for a person to look at, never deleted.
func (d *Daemon) importSpool(ctx context.Context) {
	files, err := spool.Files(d.cfg.SpoolDir)
	if err != nil {
		d.log.Error().Err(err).Str("spool", d.cfg.SpoolDir).Msg("read spool")
		return
	}
	for _, f := range files {
		req, err := spool.Read(f, json.Unmarshal)
		var paths []string
		if err == nil {
			paths, err = d.requestPaths(req)
		}
		if err != nil {
			d.log.Error().Err(err).Str("file", f).Msg("bad spool file, kept as .bad")
			os.Rename(f, f+".bad")
			continue
		}
		if err := d.write(func() error { _, err := d.queue.Enqueue(ctx, paths); return err }); err != nil {
			// The file stays; the next scan tries again.
			d.log.Error().Err(err).Str("file", f).Msg("import spool file: queue cannot write")
			return
		}
		d.qhealth.release(paths)
		os.Remove(f)
		d.log.Info().Str("file", f).Int("paths", len(paths)).Msg("imported spooled request")
	}
}
