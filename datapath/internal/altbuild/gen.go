// Package altbuild is a second build of the datapath's BPF object: the same
// datapath/bpf/datapath.c, optimised for size (-Os) instead of speed (-O2).
// Its programs do what the embedded ones do with other instructions (other
// program tags), so the upgrade tests can replace a running datapath with a
// genuinely different build ([datapath.Config].Programs,
// [datapath.Datapath.Upgrade]). Only tests import it.
package altbuild

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -no-global-types -cflags "-Os -g -Wall -Werror -mcpu=v3 -I../../../internal/bpf/include" Datapath ../../bpf/datapath.c
