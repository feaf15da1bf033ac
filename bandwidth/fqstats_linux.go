package bandwidth

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Offsets in struct tc_fq_qd_stats (include/uapi/linux/pkt_sched.h), the
// fq qdisc's extended statistics: eight u64 counters, four u32, then
// ce_mark, horizon_drops and horizon_caps (Linux 5.7).
const (
	fqStatsThrottled    = 3 * 8
	fqStatsHorizonDrops = 8*8 + 4*4 + 8
	fqStatsHorizonCaps  = fqStatsHorizonDrops + 8
	fqStatsMinLen       = fqStatsHorizonCaps + 8
)

// fqStats reads the statistics of the fq qdiscs on dev (one, or one per TX
// queue under mq) and sums them. netlink.QdiscList does not return a
// qdisc's extended statistics (TCA_XSTATS), so it dumps the qdiscs itself.
func fqStats(ns netns.NsHandle, h *netlink.Handle, dev string) (DeviceStats, error) {
	st := DeviceStats{Device: dev}
	link, err := h.LinkByName(dev)
	if err != nil {
		return st, fmt.Errorf("device %s: %w", dev, err)
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return st, fmt.Errorf("netlink socket: %w", err)
	}
	defer sock.Close()
	req := nl.NewNetlinkRequest(unix.RTM_GETQDISC, unix.NLM_F_DUMP)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}}
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(link.Attrs().Index)})
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWQDISC)
	if err != nil {
		return st, fmt.Errorf("device %s: dump qdiscs: %w", dev, err)
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofTcMsg {
			continue
		}
		tc := nl.DeserializeTcMsg(m)
		if int(tc.Ifindex) != link.Attrs().Index {
			continue // a dump may return every device's qdiscs
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofTcMsg:])
		if err != nil {
			return st, fmt.Errorf("device %s: qdisc attributes: %w", dev, err)
		}
		if kind(attrs) != "fq" {
			continue
		}
		for _, a := range attrs {
			if a.Attr.Type != nl.TCA_XSTATS {
				continue
			}
			if len(a.Value) < fqStatsMinLen {
				return st, fmt.Errorf("device %s: fq statistics of %d bytes, want at least %d (Linux 5.7)", dev, len(a.Value), fqStatsMinLen)
			}
			st.Qdiscs++
			st.Throttled += binary.NativeEndian.Uint64(a.Value[fqStatsThrottled:])
			st.HorizonDrops += binary.NativeEndian.Uint64(a.Value[fqStatsHorizonDrops:])
			st.HorizonCaps += binary.NativeEndian.Uint64(a.Value[fqStatsHorizonCaps:])
		}
	}
	return st, nil
}

func kind(attrs []syscall.NetlinkRouteAttr) string {
	for _, a := range attrs {
		if a.Attr.Type == nl.TCA_KIND && len(a.Value) > 0 {
			return string(a.Value[:len(a.Value)-1])
		}
	}
	return ""
}
