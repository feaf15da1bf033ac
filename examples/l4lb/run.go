package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nodeplane/nodeplane/lb"
)

func readConfig(path string) (*config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg, err := parseConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// runLB is `l4lb run -config FILE [-check]`: load the north-south load
// balancer onto the configured interface, apply the file, re-read it on
// SIGHUP and stop on SIGINT or SIGTERM. With -check it only validates the
// file.
func runLB(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("l4lb run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "the YAML `file` (see `go doc` of this command)")
	check := fs.Bool("check", false, "validate the file and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitBadInput
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: l4lb run -config FILE [-check]")
		return exitBadInput
	}
	cfg, err := readConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "l4lb run: %v\n", err)
		return exitBadInput
	}
	if *check {
		fmt.Fprintf(stdout, "%s: %d services on %s\n", *path, len(cfg.Services), cfg.Interface)
		return exitOK
	}

	iface, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		fmt.Fprintf(stderr, "l4lb run: %v\n", err)
		return exitBadInput
	}
	ns, err := lb.NewNorthSouth(cfg.NS)
	if err != nil {
		fmt.Fprintf(stderr, "l4lb run: %v\n", err)
		return 1
	}
	defer ns.Close()
	mode, err := ns.Attach(iface.Index, lb.AttachAuto)
	if err != nil {
		fmt.Fprintf(stderr, "l4lb run: %v\n", err)
		return 1
	}
	if err := apply(ns, nil, cfg); err != nil {
		fmt.Fprintf(stderr, "l4lb run: %v\n", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	fmt.Fprintf(stdout, "l4lb: %d services on %s (%s)\n", len(cfg.Services), cfg.Interface, mode)
	for s := range sig {
		if s != syscall.SIGHUP {
			return exitOK
		}
		next, err := readConfig(*path)
		if err == nil {
			err = apply(ns, cfg, next)
		}
		if err != nil {
			// Keep serving; what apply changed before the error
			// stays, and the next reload retries the rest.
			fmt.Fprintf(stderr, "l4lb: reload: %v\n", err)
			if next != nil && next.Interface == cfg.Interface && sameNS(next.NS, cfg.NS) {
				cfg = next
			}
			continue
		}
		cfg = next
		fmt.Fprintf(stdout, "l4lb: reloaded, %d services\n", len(cfg.Services))
	}
	return exitOK
}

// runDSRBackend is `l4lb dsr-backend IFACE...`: the backend side of DSR on
// the named interfaces, until SIGINT or SIGTERM.
func runDSRBackend(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: l4lb dsr-backend IFACE...")
		return exitBadInput
	}
	var ifaces []*net.Interface
	for _, name := range args {
		iface, err := net.InterfaceByName(name)
		if err != nil {
			fmt.Fprintf(stderr, "l4lb dsr-backend: %v\n", err)
			return exitBadInput
		}
		ifaces = append(ifaces, iface)
	}
	ns, err := lb.NewNorthSouth(lb.NorthSouthConfig{})
	if err != nil {
		fmt.Fprintf(stderr, "l4lb dsr-backend: %v\n", err)
		return 1
	}
	defer ns.Close()
	for _, iface := range ifaces {
		if err := ns.AttachDSRBackend(iface.Index); err != nil {
			fmt.Fprintf(stderr, "l4lb dsr-backend: %s: %v\n", iface.Name, err)
			return 1
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	fmt.Fprintf(stdout, "l4lb: DSR backend side on %s\n", strings.Join(args, ", "))
	<-sig
	return exitOK
}
