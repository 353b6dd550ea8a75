package hook

import (
	"bytes"
	"errors"
	"github.com/nixpush/nixpush/api"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Handoff sends req to the daemon's enqueue endpoint and returns once the
// daemon has committed it to its queue, or after timeout.
//
// It is what nixpush-hook runs after every build, so it is written for
// process start-up cost: one Unix socket by raw syscalls and a hand-made
// HTTP/1.1 request, without net or net/http (whose initialisation and
// dynamic linking cost several milliseconds per run on small machines).
// The daemon speaks ordinary HTTP; everything else uses api/client.
func Handoff(socket string, req api.EnqueueRequest, timeout time.Duration) error {
	return HandoffTraced(socket, req, timeout, nil)
}

// HandoffTraced is Handoff that, when connected is not nil, sets it to
// the moment the connection was made: for timing where a hook's time goes
// (accepted, then answered).
func HandoffTraced(socket string, req api.EnqueueRequest, timeout time.Duration, connected *time.Time) error {
	body := req.AppendJSON(nil)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return &HandoffError{Socket: socket, Err: err}
	}
	defer syscall.Close(fd)
	// Both timeouts bound the whole exchange: connect (a full backlog),
	// write, and the read of the answer, which comes after the fsync.
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: socket}); err != nil {
		return &HandoffError{Socket: socket, Err: err}
	}
	if connected != nil {
		*connected = time.Now()
	}
	msg := make([]byte, 0, 160+len(body))
	msg = append(msg, "POST /v1/enqueue HTTP/1.1\r\nHost: nixpush\r\nUser-Agent: nixpush-hook\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "...)
	msg = strconv.AppendInt(msg, int64(len(body)), 10)
	msg = append(msg, "\r\n\r\n"...)
	msg = append(msg, body...)
	for len(msg) > 0 {
		n, err := syscall.Write(fd, msg)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &HandoffError{Socket: socket, Err: err}
		}
		msg = msg[n:]
	}
	resp, err := readAll(fd, 64<<10)
	if err != nil {
		return &HandoffError{Socket: socket, Err: err}
	}
	return parseAnswer(socket, resp)
}

// HandoffError is the daemon being unreachable or not answering in time,
// as opposed to an *api.APIError, the daemon refusing the request.
type HandoffError struct {
	Socket string
	Err    error
}

func (e *HandoffError) Error() string {
	if errors.Is(e.Err, syscall.EAGAIN) {
		return "daemon at " + e.Socket + ": no answer in time"
	}
	return "daemon at " + e.Socket + ": " + e.Err.Error()
}

func (e *HandoffError) Unwrap() error { return e.Err }

// readAll reads until the daemon closes the connection (Connection: close).
func readAll(fd int, limit int) ([]byte, error) {
	buf := make([]byte, 0, 1024)
	for len(buf) < limit {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := syscall.Read(fd, buf[len(buf):cap(buf)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
	return buf, nil
}

// parseAnswer reads the status line of an HTTP/1.1 answer and, when it is
// not 2xx, the daemon's {"error": ...} body.
func parseAnswer(socket string, resp []byte) error {
	line, rest, _ := bytes.Cut(resp, []byte("\r\n"))
	proto, code, ok := bytes.Cut(line, []byte(" "))
	if !ok || !bytes.HasPrefix(proto, []byte("HTTP/1.")) || len(code) < 3 {
		return &HandoffError{Socket: socket, Err: errors.New("not an HTTP answer: " + strconv.Quote(string(line)))}
	}
	status, err := strconv.Atoi(string(code[:3]))
	if err != nil {
		return &HandoffError{Socket: socket, Err: errors.New("bad HTTP status line: " + strconv.Quote(string(line)))}
	}
	if status/100 == 2 {
		return nil
	}
	msg := "POST /v1/enqueue: " + string(line)
	if _, body, ok := bytes.Cut(rest, []byte("\r\n\r\n")); ok {
		if m := errorMessage(body); m != "" {
			msg = m
		}
	}
	return &api.APIError{StatusCode: status, Message: msg}
}

// errorMessage is the "error" string of the daemon's {"error": "..."}
// answer, or "" when body is not one.
func errorMessage(body []byte) string {
	_, v, ok := bytes.Cut(body, []byte(`"error":`))
	if !ok {
		return ""
	}
	v = bytes.TrimSpace(v)
	// The JSON string ends at the first quote not escaped by a backslash.
	for i := 1; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			s, err := strconv.Unquote(strings.ReplaceAll(string(v[:i+1]), `\/`, "/"))
			if err != nil {
				return ""
			}
			return s
		}
	}
	return ""
}
