package etcdalloc

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nodeplane/nodeplane/identity"
)

// keys builds the etcd keys of one cluster.
type keys struct {
	cluster uint8
	base    string // prefix + "c<cluster>/"
}

func newKeys(prefix string, cluster uint8) keys {
	return keys{cluster: cluster, base: prefix + "c" + strconv.Itoa(int(cluster)) + "/"}
}

func (k keys) idPrefix() string  { return k.base + "id/" }
func (k keys) refPrefix() string { return k.base + "ref/" }

func (k keys) id(id identity.ID) string {
	return k.idPrefix() + strconv.FormatUint(uint64(id), 10)
}

func (k keys) labels(ls identity.Labels) string {
	return k.base + "labels/" + ls.Key()
}

// refLabelsPrefix is the range of every node's reference to ls. A canonical
// label set ends in ';' and no source starts with '/', so the range holds
// the references of ls only.
func (k keys) refLabelsPrefix(ls identity.Labels) string {
	return k.refPrefix() + ls.Key() + "/"
}

func (k keys) ref(ls identity.Labels, node string) string {
	return k.refLabelsPrefix(ls) + node
}

// parseID reads an ID written by this package and checks that it belongs
// to the cluster.
func (k keys) parseID(s string) (identity.ID, error) {
	id, err := identity.ParseID(s)
	if err != nil {
		return identity.Unknown, err
	}
	if !id.IsCluster() || id.ClusterID() != k.cluster {
		return identity.Unknown, fmt.Errorf("identity %d: %w: not of cluster %d", uint32(id), identity.ErrInvalidID, k.cluster)
	}
	return id, nil
}

// parseIDKey reads the ID of a master key.
func (k keys) parseIDKey(key string) (identity.ID, error) {
	s, ok := strings.CutPrefix(key, k.idPrefix())
	if !ok {
		return identity.Unknown, fmt.Errorf("key %q outside %q", key, k.idPrefix())
	}
	return k.parseID(s)
}

// refLabels returns the label set a reference key names.
func (k keys) refLabels(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, k.refPrefix())
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", false
	}
	return rest[:i], true
}
