"""One module per `avcd` command: absl flags plus `main(argv)`."""
