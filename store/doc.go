// Package store owns the binary cache's storage: the Store interface (an
// object namespace with Has, Put, Get) and Bucket (listing, reading,
// deleting, conditional writes) with their S3 and file:// implementations,
// the classes of their errors (StoreError: unreachable, certificate,
// credentials, bucket missing, access denied; ErrNotExist,
// ErrConditionFailed; Permanent), and the S3 client's transport, which
// sees every request: the adaptive limit on requests in flight under
// SlowDown/429/Retry-After, and the upload rate cap (its schedule is an
// option of the store for that reason).
//
// Invariant: both implementations keep one contract, which storetest.Run
// checks against a file:// directory and a real MinIO: the same
// not-found and precondition errors, listings in S3's key order (byte-wise
// ascending) a page of PageSize keys at a time.
//
// Capabilities beyond Store (Bucket, Lister, Checker, Deleter, Multipart,
// Initializer, TrafficReporter, *S3Store) are found with As, never by a
// type assertion: wrappers (Count, storetest's faults) keep what they
// wrap visible through Unwrap, and Count offers counted views of the
// capabilities whose requests it counts.
package store
