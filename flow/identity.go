package flow

import (
	"context"
	"slices"

	"github.com/nodeplane/nodeplane/identity"
)

// SyncIdentities keeps the catalog's labels by identity in step with an
// identity allocator: the reserved identities and every identity the
// allocator knows now, then each one it adds or removes, until ctx ends
// (it then returns nil) or the watch fails. A watch cut off for falling
// behind (identity.ErrWatcherOverflow) is an error: call SyncIdentities
// again, which starts over with a fresh snapshot. Removed identities stay
// in the catalog's history for its retention, so flows of packets from
// before the removal keep their labels.
func (c *Catalog) SyncIdentities(ctx context.Context, a identity.Allocator) error {
	set := func(id identity.Identity) { c.SetIdentity(uint32(id.ID), labelStrings(id.Labels)) }
	for _, id := range identity.ReservedIdentities() {
		set(id)
	}
	snapshot, w := a.Watch(identity.WatchOptions{})
	defer w.Close()
	for _, id := range snapshot {
		set(id)
	}
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch ev.Kind {
		case identity.EventAdded:
			set(identity.Identity{ID: ev.ID, Labels: ev.Labels})
		case identity.EventRemoved:
			c.DeleteIdentity(uint32(ev.ID))
		}
	}
}

// labelStrings returns labels as Hubble prints them: "source:key=value"
// ("source:key" without a value), sorted.
func labelStrings(ls identity.Labels) []string {
	out := make([]string, 0, ls.Len())
	for l := range ls.All() {
		out = append(out, l.String())
	}
	slices.Sort(out)
	return out
}
