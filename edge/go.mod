module guestlist.dev/edge

go 1.26.8

replace guestlist.dev/proto => ../proto
