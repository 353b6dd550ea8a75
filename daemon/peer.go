package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// peer is who is at the other end of a connection (SO_PEERCRED).
type peer struct {
	ok       bool
	pid      int32
	uid, gid uint32
}

type peerKey struct{}

// connContext records the peer's credentials on each accepted connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	p := peer{}
	if uc, ok := c.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
					p = peer{ok: true, pid: cred.Pid, uid: cred.Uid, gid: cred.Gid}
				}
			})
		}
	}
	return context.WithValue(ctx, peerKey{}, p)
}

func peerFrom(ctx context.Context) peer {
	p, _ := ctx.Value(peerKey{}).(peer)
	return p
}

// mayEnqueue says whether p may hand paths to the daemon: root (nix-daemon
// runs the hook as root), the daemon's own user, and members of the socket
// group.
func (d *Daemon) mayEnqueue(p peer) error {
	if !p.ok {
		return fmt.Errorf("cannot tell who is calling (no peer credentials); only root and group members may enqueue")
	}
	if p.uid == 0 || p.uid == uint32(os.Getuid()) {
		return nil
	}
	if d.groupID >= 0 && (p.gid == uint32(d.groupID) || inGroups(p.pid, d.groupID)) {
		return nil
	}
	who := "uid " + strconv.Itoa(int(p.uid))
	if d.cfg.SocketGroup != "" {
		return fmt.Errorf("%s may not enqueue: only root and members of group %s may; add the user to it", who, d.cfg.SocketGroup)
	}
	return fmt.Errorf("%s may not enqueue: only root may (start the daemon with --socket-group GROUP to allow a group)", who)
}

// inGroups reports whether process pid has gid among its supplementary
// groups (SO_PEERCRED carries only the primary group).
func inGroups(pid int32, gid int) bool {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			for _, g := range strings.Fields(rest) {
				if g == strconv.Itoa(gid) {
					return true
				}
			}
			return false
		}
	}
	return false
}
