package overlay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// follower is what follows the registry: the ipcache [Syncer] and the
// native-routing [Router].
type follower interface {
	// apply makes the follower's state for n current.
	apply(n Node) error
	// remove removes the state of the node called name.
	remove(name string) error
	// known returns the nodes the follower holds state for.
	known() []string
}

// follow feeds f from reg until ctx is done (nil) or the watch fails: the
// snapshot first (removing nodes that left while nobody watched), then
// every change. A watcher that falls behind, or that its source ended
// (an etcd watch cancelled by the server), is replaced by a new watch; a
// registry that refuses to watch (closed) ends follow with its error.
func follow(ctx context.Context, reg Registry, f follower) error {
	for {
		nodes, w, err := reg.Watch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("overlay: watch nodes: %w", err)
		}
		err = followWatch(ctx, nodes, w, f)
		w.Close()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, identity.ErrWatcherOverflow), errors.Is(err, nodeplane.ErrClosed):
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		default:
			return err
		}
	}
}

func followWatch(ctx context.Context, nodes []Node, w *identity.Watcher[Event], f follower) error {
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		seen[n.Name] = true
		if err := f.apply(n); err != nil {
			return err
		}
	}
	for _, name := range f.known() {
		if !seen[name] {
			if err := f.remove(name); err != nil {
				return err
			}
		}
	}
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, nodeplane.ErrClosed) {
				return fmt.Errorf("overlay: registry watch ended: %w", err)
			}
			return err
		}
		if ev.Deleted {
			err = f.remove(ev.Node.Name)
		} else {
			err = f.apply(ev.Node)
		}
		if err != nil {
			return err
		}
	}
}
