module guestlist.dev/edge

go 1.26.8

replace guestlist.dev/proto => ../proto

require (
	cel.dev/cel-go v0.32.0 // indirect
	golang.org/x/net v0.61.0 // indirect
)
