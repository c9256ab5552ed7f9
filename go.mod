module guestlist.dev/guestlist

go 1.26.8
