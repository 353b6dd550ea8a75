// Package bucketadmin prepares a store to serve as a Nix binary cache and
// checks that it can: Init (the store's own preparation, for a bucket
// creating it, anonymous reads and an expiry rule, then nix-cache-info),
// the least-privilege IAM policies of the uploading and the gc accounts,
// and Preflight, the checks the daemon and nixpush check run in order
// (endpoint, credentials, bucket, write, nix-cache-info), each failure
// classified as a store.StoreError that says how to fix it.
//
// What only an S3 store can do (create a MinIO user, set a bucket policy)
// is the store package's, on S3Store; this package says what to ask for.
// Running Init again changes nothing, and Preflight leaves nothing behind
// but nix-cache-info when asked to write it.
package bucketadmin
