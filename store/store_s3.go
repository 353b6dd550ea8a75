package store

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nixpush/nixpush/layout"
)

// S3Store is a binary cache in an S3 bucket (AWS, MinIO, R2, Garage, …).
type S3Store struct {
	client   *minio.Client
	probe    *minio.Client // for checks: one retry, so a dead endpoint is told in a second, not ten
	bucket   string
	name     string
	region   string
	endpoint string
	secure   bool
	creds    *credentials.Credentials
	tr       http.RoundTripper
	gate     *gate
	bw       *bandwidth
}

// PartSize is the multipart part size for NARs of unknown compressed size:
// S3's smallest, since part buffers are most of the daemon's memory while
// large NARs stream (see parts). Objects can be up to 10,000 parts (48.8 GiB
// of compressed NAR).
const PartSize = 5 << 20

var s3Params = map[string]bool{"endpoint": true, "scheme": true, "region": true, "profile": true}

func openS3(ctx context.Context, u *url.URL, opts Options) (*S3Store, error) {
	bucket := u.Host
	if bucket == "" {
		return nil, fmt.Errorf("store URI %q: missing bucket; want s3://BUCKET?endpoint=HOST", u.Redacted())
	}
	q := u.Query()
	for k := range q {
		if !s3Params[k] {
			keys := make([]string, 0, len(s3Params))
			for p := range s3Params {
				keys = append(keys, p)
			}
			sort.Strings(keys)
			return nil, fmt.Errorf("store URI %q: unknown parameter %q; supported: %s", u.Redacted(), k, strings.Join(keys, ", "))
		}
	}
	endpoint := q.Get("endpoint")
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	scheme := q.Get("scheme")
	switch scheme {
	case "", "https", "http":
	default:
		return nil, fmt.Errorf("store URI %q: scheme must be http or https, not %q", u.Redacted(), scheme)
	}
	secure := scheme != "http"
	region := q.Get("region")
	if region == "" {
		region = "us-east-1"
	}

	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	if opts.CACertFile != "" {
		pool, err := CAPool(opts.CACertFile)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	transport.MaxIdleConnsPerHost = maxInFlight
	// Every request, the probe's too, passes one gate: throttling seen by
	// one slows all, and the cap counts every byte.
	gate := newGate(maxInFlight, nil)
	bw := newBandwidth(opts.UploadRate, nil, nil)
	tr := &storeTransport{next: transport, gate: gate, bw: bw, sleep: Sleep}

	mopts := minio.Options{
		Creds:        credentialsFor(q.Get("profile")),
		Secure:       secure,
		Region:       region,
		Transport:    tr,
		BucketLookup: minio.BucketLookupAuto,
	}
	client, err := minio.New(endpoint, &mopts)
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", endpoint, err)
	}
	mopts.MaxRetries = 1
	probe, err := minio.New(endpoint, &mopts)
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", endpoint, err)
	}
	return &S3Store{creds: mopts.Creds, tr: tr, gate: gate, bw: bw, client: client, probe: probe, bucket: bucket, region: region, endpoint: endpoint, secure: secure, name: fmt.Sprintf("s3://%s (%s://%s)", bucket, map[bool]string{true: "https", false: "http"}[secure], endpoint)}, nil
}

// credentialsFor reads credentials as the AWS tools do: with a profile named
// in the URI, from that profile of the shared credentials file
// (~/.aws/credentials or $AWS_SHARED_CREDENTIALS_FILE); otherwise from
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, then the file's $AWS_PROFILE or
// default profile.
func credentialsFor(profile string) *credentials.Credentials {
	if profile != "" {
		return credentials.NewChainCredentials([]credentials.Provider{
			&credentials.FileAWSCredentials{Profile: profile},
		})
	}
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
	})
}

func (s *S3Store) String() string { return s.name }

// Traffic is what the requests to the store look like now: throttling,
// the limit on requests in flight, the upload rate and its cap.
func (s *S3Store) Traffic() Traffic {
	var t Traffic
	s.gate.traffic(&t)
	s.bw.traffic(&t)
	return t
}

func (s *S3Store) Has(ctx context.Context, key string) (bool, error) {
	err := persist(ctx, nil, func() error {
		_, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
		return err
	})
	if err == nil {
		return true, nil
	}
	if isNotFound(err) {
		return false, nil
	}
	return false, s.wrap("stat", key, err)
}

func (s *S3Store) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	opts := minio.PutObjectOptions{
		ContentType: contentType,
		// No SHA-256 of the payload in the request signature, as minio-go
		// already does over https: on plain http it costs a hash of every
		// byte here and again in the server. Integrity does not rest on it:
		// the signed .narinfo carries the NAR's and the file's SHA-256,
		// which every Nix client checks, and it is written last.
		DisableContentSha256: true,
	}
	if size < 0 {
		return s.putStream(ctx, key, r, opts)
	}
	if err := persist(ctx, r, func() error {
		_, err := s.client.PutObject(ctx, s.bucket, key, r, size, opts)
		return err
	}); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// MaxParts is S3's limit on the parts of a multipart upload.
const MaxParts = 10000

// putStream uploads r, of unknown size. What fits in one part goes up with
// a single PUT. More becomes a multipart upload (minio.Core's calls) in
// which the next part is read, so packed and compressed, while the
// previous one is sent; minio-go's own streaming upload does one after the
// other and takes a fresh buffer per object. A read error (packing failed)
// or an upload error aborts the upload: no object, no stray parts.
func (s *S3Store) putStream(ctx context.Context, key string, r io.Reader, opts minio.PutObjectOptions) (err error) {
	buf, err := Parts.Get(ctx)
	if err != nil {
		return err
	}
	n, rerr := io.ReadFull(r, buf)
	if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
		defer Parts.Put(buf)
		return s.Put(ctx, key, bytes.NewReader(buf[:n]), int64(n), opts.ContentType)
	}
	if rerr != nil {
		Parts.Put(buf)
		return rerr
	}

	return s.putMultipart(ctx, key, r, opts, buf, n, rerr)
}

// putMultipart goes on with putStream as a multipart upload, from the
// first part (buf[:n], and rerr, the error of reading it).
func (s *S3Store) putMultipart(ctx context.Context, key string, r io.Reader, opts minio.PutObjectOptions, buf []byte, n int, rerr error) (err error) {
	core := minio.Core{Client: s.client}
	var id string
	err = persist(ctx, nil, func() (err error) {
		id, err = core.NewMultipartUpload(ctx, s.bucket, key, opts)
		return err
	})
	if err != nil {
		Parts.Put(buf)
		return s.wrap("put", key, err)
	}
	defer func() {
		if err != nil {
			// Not ctx: a cancelled upload is aborted too.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = core.AbortMultipartUpload(actx, s.bucket, key, id)
		}
	}()

	var done []minio.CompletePart
	for num := 1; ; num++ {
		pending := s.sendPart(ctx, key, id, num, buf, n)
		last := rerr == io.ErrUnexpectedEOF
		if !last {
			if num == MaxParts {
				<-pending
				return Permanent(fmt.Errorf("%s put %s: more than %d parts of %d MiB", s.name, key, MaxParts, PartSize>>20))
			}
			if buf, err = Parts.Get(ctx); err != nil {
				<-pending
				return err
			}
			n, rerr = io.ReadFull(r, buf)
		}
		res := <-pending
		if res.err != nil {
			if !last {
				Parts.Put(buf)
			}
			return s.wrap("put", key, res.err)
		}
		done = append(done, minio.CompletePart{PartNumber: num, ETag: res.part.ETag})
		if last {
			break
		}
		if rerr == io.EOF {
			Parts.Put(buf)
			break
		}
		if rerr != nil && rerr != io.ErrUnexpectedEOF {
			Parts.Put(buf)
			return rerr
		}
	}
	if err := persist(ctx, nil, func() error {
		_, err := core.CompleteMultipartUpload(ctx, s.bucket, key, id, done, opts)
		return err
	}); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// sentPart is how a part's upload ended.
type sentPart struct {
	part minio.ObjectPart
	err  error
}

// sendPart sends buf[:n] as part num of upload id, in the background, and
// gives buf back to Parts once sent.
func (s *S3Store) sendPart(ctx context.Context, key, id string, num int, buf []byte, n int) <-chan sentPart {
	ch := make(chan sentPart, 1)
	go func() {
		defer Parts.Put(buf)
		var p minio.ObjectPart
		err := persist(ctx, nil, func() (err error) {
			p, err = minio.Core{Client: s.client}.PutObjectPart(ctx, s.bucket, key, id, num, bytes.NewReader(buf[:n]), int64(n),
				minio.PutObjectPartOptions{DisableContentSha256: true})
			return err
		})
		ch <- sentPart{p, err}
	}()
	return ch
}

// ListTop lists the bucket's top level (ListObjectsV2 with delimiter "/",
// a thousand names a request).
func (s *S3Store) ListTop(ctx context.Context, fn func(name string) bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio-go's listing goroutine when fn stops early
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{}) {
		if obj.Err != nil {
			return s.wrap("list", "", obj.Err)
		}
		if !strings.Contains(obj.Key, "/") && !fn(obj.Key) {
			return nil
		}
	}
	return nil
}

func (s *S3Store) Get(ctx context.Context, key string) ([]byte, error) {
	var b []byte
	err := persist(ctx, nil, func() error {
		obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer obj.Close()
		b, err = io.ReadAll(obj)
		return err
	})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%s: %s: %w", s.name, key, ErrNotExist)
		}
		return nil, s.wrap("get", key, err)
	}
	return b, nil
}

func isNotFound(err error) bool {
	code := minio.ToErrorResponse(err).Code
	return code == "NoSuchKey" || code == "NotFound"
}

// wrap classifies an S3 error once, where it is understood: credentials,
// a missing bucket and access denied are the configuration's (permanent,
// healed by the store check); a connection that fails is transient, a
// certificate not trusted is configuration; anything else may pass.
func (s *S3Store) wrap(op, key string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	resp := minio.ToErrorResponse(err)
	var problem StoreProblem
	switch resp.Code {
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId":
		problem = Credentials
	case "NoSuchBucket":
		problem = NoBucket
	case "AccessDenied", "AllAccessDisabled":
		problem = Denied
	}
	if problem == unclassified && resp.StatusCode == http.StatusForbidden {
		problem = Denied
	}
	where := strings.TrimSpace(s.name + " " + op + " " + key)
	if problem != unclassified {
		return Permanent(&StoreError{Problem: problem, Err: fmt.Errorf("%s: %s (%s)", where, resp.Message, resp.Code)})
	}
	if throttlingError(err) {
		return fmt.Errorf("%s: store throttling: %s (%d %s)", where, resp.Message, resp.StatusCode, resp.Code)
	}
	switch problem = classifyNet(err); problem {
	case Certificate:
		return Permanent(&StoreError{Problem: problem, Err: fmt.Errorf("%s: %w", where, innerURLError(err))})
	case Unreachable:
		return &StoreError{Problem: problem, Err: fmt.Errorf("%s: %w", where, innerURLError(err))}
	}
	return fmt.Errorf("%s: %w", where, err)
}

// innerURLError drops net/http's "Get URL:" prefix, which repeats the
// store's name with a query string, for the error below it.
func innerURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Check reaches the bucket with one listing of the probe prefix: the
// endpoint answers, the credentials are accepted, the bucket exists (a
// listing has an error body, which a HEAD lacks, so AWS tells a bad key
// from a policy that denies).
func (s *S3Store) Check(ctx context.Context) error {
	err := persist(ctx, nil, func() error {
		_, err := minio.Core{Client: s.probe}.ListObjectsV2(s.bucket, layout.PreflightPrefix, "", "", "/", 1)
		return err
	})
	if err != nil {
		return s.wrap("list", layout.PreflightPrefix, err)
	}
	return nil
}

// Delete removes an object; a missing one is no error.
func (s *S3Store) Delete(ctx context.Context, key string) error {
	if err := persist(ctx, nil, func() error {
		return s.probe.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	}); err != nil && !isNotFound(err) {
		return s.wrap("delete", key, err)
	}
	return nil
}

// Bucket is the bucket's name.
func (s *S3Store) Bucket() string { return s.bucket }
