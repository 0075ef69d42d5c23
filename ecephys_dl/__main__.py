"""``python -m ecephys_dl`` runs the command line."""

from ecephys_dl.cli import main

if __name__ == "__main__":
    main()
