package daemon

import (
	"context"
	"os"
	"time"
)

// importSpoolLoop imports spooled requests at start and then every
// SpoolInterval, until ctx is done.
func (d *Daemon) importSpoolLoop(ctx context.Context) error {
	t := time.NewTicker(d.cfg.SpoolInterval)
	defer t.Stop()
	for {
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
	files, err := SpoolFiles(d.cfg.SpoolDir)
	if err != nil {
		d.log.Error().Err(err).Str("spool", d.cfg.SpoolDir).Msg("read spool")
		return
	}
	for _, f := range files {
		req, err := ReadSpoolFile(f)
		var paths []string
		if err == nil {
			paths, err = d.requestPaths(req)
		}
		if err != nil {
			d.log.Error().Err(err).Str("file", f).Msg("bad spool file, kept as .bad")
			os.Rename(f, f+".bad")
			continue
		}
		if _, err := d.queue.Enqueue(ctx, paths); err != nil {
			d.log.Error().Err(err).Str("file", f).Msg("import spool file")
			return
		}
		os.Remove(f)
		d.log.Info().Str("file", f).Int("paths", len(paths)).Msg("imported spooled request")
	}
}
