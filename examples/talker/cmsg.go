package main

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsgHeader views the start of b as a struct cmsghdr. b comes from make and is
// at least CmsgSpace bytes long, so it is suitably aligned.
func cmsgHeader(b []byte) *unix.Cmsghdr {
	return (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
}
