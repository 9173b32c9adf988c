# fish completion for kechictl(1)
# Installed as .../fish/vendor_completions.d/kechictl.fish

function __kechi_apps --description 'kechi app names'
    for f in /etc/kechi/*.toml /run/kechi/*.ctl $XDG_RUNTIME_DIR/kechi/*.ctl
        string replace -r '^.*/([^/]+)\.(toml|ctl)$' '$1' -- $f
    end | sort -u
end

function __kechi_workers --description 'worker serials of the app on the command line'
    set -l tokens (commandline -opc)
    set -l app
    for i in (seq 3 (count $tokens))
        if not string match -q -- '-*' $tokens[$i]; and not contains -- $tokens[(math $i - 1)] --worker --timeout
            set app $tokens[$i]
            break
        end
    end
    test -n "$app"; or return
    kechictl status $app --json 2>/dev/null | string replace -rf '^\s*"serial":\s*(\d+).*' '$1'
end

set -l cmds list status mem recycle config check help
complete -c kechictl -f
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -s h -l help -d 'Print help'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -s V -l version -d 'Print version'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a list -d 'List the apps with state, workers and memory'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a status -d 'Show the workers of an app'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a mem -d 'Memory per process for PIDs or an app'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a recycle -d 'Recycle workers gracefully'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a config -d 'Effective value of every key and its source'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a check -d 'Check an app file'
complete -c kechictl -n "not __fish_seen_subcommand_from $cmds" -a help -d 'Print help for a command'

complete -c kechictl -n "__fish_seen_subcommand_from $cmds" -s h -l help -d 'Print help'
complete -c kechictl -n "__fish_seen_subcommand_from list status mem config" -l json -d 'Print JSON'
complete -c kechictl -n "__fish_seen_subcommand_from status recycle" -a '(__kechi_apps)' -d app
complete -c kechictl -n "__fish_seen_subcommand_from mem" -a '(__kechi_apps)' -d app
complete -c kechictl -n "__fish_seen_subcommand_from mem" -a '(__fish_complete_pids)'
complete -c kechictl -n "__fish_seen_subcommand_from config check" -a '(__kechi_apps)' -d app
complete -c kechictl -n "__fish_seen_subcommand_from config check" -F -a '(__fish_complete_suffix .toml)'
complete -c kechictl -n "__fish_seen_subcommand_from recycle" -l worker -x -a '(__kechi_workers)' -d 'Recycle this worker (serial)'
complete -c kechictl -n "__fish_seen_subcommand_from recycle" -l all -d 'Recycle every worker'
complete -c kechictl -n "__fish_seen_subcommand_from recycle" -l wait -d 'Wait until the workers are replaced'
complete -c kechictl -n "__fish_seen_subcommand_from recycle" -l timeout -x -a '30s 1m 5m 15m' -d 'Give up waiting after this long'
complete -c kechictl -n "__fish_seen_subcommand_from help" -a "$cmds"
