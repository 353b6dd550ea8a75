// Package spool owns the spool: the directory where nixpush-hook leaves the
// requests the daemon could not take, and from which the daemon imports
// them. A spool file is the body of a POST /v1/enqueue (api.EnqueueRequest
// as JSON), named by the time it was written and ending in Ext. Write is the
// hook's side, Files and Read the daemon's.
//
// Invariant: a file ending in Ext is complete and fsynced. Write renames it
// into place only after its content reached the disk, so a reader never sees
// half a request; temporary files start with a dot and end otherwise.
//
// It is linked into nixpush-hook, so, like package api, it links neither
// encoding/json nor fmt: Read takes json.Unmarshal from its caller.
package spool
