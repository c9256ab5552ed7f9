module guestlist.dev/projections

go 1.26.8

replace (
	guestlist.dev/edge => ../edge
	guestlist.dev/proto => ../proto
	guestlist.dev/services => ../services
)

require (
	go.etcd.io/bbolt v1.4.3
	google.golang.org/grpc v1.84.0
	google.golang.org/protobuf v1.36.13-0.20261016172727-e9ee2a76ab8e
	guestlist.dev/proto v0.0.0-00010101000000-000000000000
	guestlist.dev/services v0.0.0-00010101000000-000000000000
)

require (
	github.com/stretchr/testify v1.12.1 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261110000943-09e21b237f2c // indirect
)
