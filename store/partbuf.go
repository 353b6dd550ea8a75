package store

import "github.com/nixpush/nixpush/internal/partbuf"

// Parts is the pool of the part buffers of streaming uploads, for the
// streams partbuf.BigStreams allows (the large NARs the uploader packs at
// once): one buffer each, and one more, so that a stream sends a part
// while the next fills whenever the other stream is not doing the same
// (on two cores, packing one stream while sending another keeps both busy
// as well).
var Parts = partbuf.NewPartPool(PartSize, partbuf.BigStreams+1)
