# bash completion for kechictl(1) and kechid(8)         -*- shell-script -*-
# Installed as /usr/share/bash-completion/completions/kechictl (and a link named kechid).

# App names: app files in /etc/kechi, and apps whose kechid is running.
_kechi_apps()
{
    local f
    for f in /etc/kechi/*.toml /run/kechi/*.ctl "${XDG_RUNTIME_DIR:-/nonexistent}"/kechi/*.ctl; do
        [[ -e $f ]] || continue
        f=${f##*/}
        printf '%s\n' "${f%.*}"
    done | sort -u
}

# Worker serials of a running app (needs access to its control socket).
_kechi_workers()
{
    kechictl status "$1" --json 2>/dev/null |
        sed -n 's/^ *"serial": *\([0-9][0-9]*\).*/\1/p'
}

_kechi_words()
{
    # split on newlines only: app names and paths never hold one
    local IFS=$'\n'
    # shellcheck disable=SC2207
    COMPREPLY+=($(compgen -W "$1" -- "$2"))
}

_kechi_toml_files()
{
    local IFS=$'\n'
    # shellcheck disable=SC2207
    COMPREPLY+=($(compgen -f -X '!*.toml' -- "$1") $(compgen -d -S / -- "$1"))
    compopt -o nospace -o filenames 2>/dev/null
}

_kechictl()
{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
        words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
    fi
    COMPREPLY=()

    local cmds="list status mem recycle config check help"
    local i cmd="" args=0
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            --worker | --timeout) ((i++)) ;;
            -*) ;;
            *) if [[ -z $cmd ]]; then cmd=${words[i]}; else ((args++)); fi ;;
        esac
    done

    if [[ -z $cmd ]]; then
        _kechi_words "${cmds// /$'\n'}"$'\n'"--help"$'\n'"--version" "$cur"
        return
    fi

    local opts="--help"
    case $cmd in
        list) opts="--json --help" ;;
        status | config) opts="--json --help" ;;
        mem) opts="--json --help" ;;
        recycle) opts="--worker --all --wait --timeout --help" ;;
        check) ;;
        help)
            ((args == 0)) && _kechi_words "${cmds// /$'\n'}" "$cur"
            return
            ;;
        *) return ;;
    esac

    if [[ $cmd == recycle ]]; then
        case $prev in
            --worker)
                local app="" j
                for ((j = 2; j < cword; j++)); do
                    [[ ${words[j]} != -* && ${words[j - 1]} != --worker && ${words[j - 1]} != --timeout ]] &&
                        { app=${words[j]}; break; }
                done
                [[ -n $app ]] && _kechi_words "$(_kechi_workers "$app")" "$cur"
                return
                ;;
            --timeout)
                _kechi_words "30s"$'\n'"1m"$'\n'"5m"$'\n'"15m" "$cur"
                return
                ;;
        esac
    fi

    if [[ $cur == -* ]]; then
        _kechi_words "${opts// /$'\n'}" "$cur"
        return
    fi

    case $cmd in
        status | recycle)
            ((args == 0)) && _kechi_words "$(_kechi_apps)" "$cur"
            ;;
        config | check)
            if ((args == 0)); then
                if [[ $cur == */* || $cur == .* ]]; then
                    _kechi_toml_files "$cur"
                else
                    _kechi_words "$(_kechi_apps)" "$cur"
                    [[ -z $cur ]] || _kechi_toml_files "$cur"
                fi
            fi
            ;;
        mem)
            if [[ $cur == [0-9]* ]]; then
                _kechi_words "$(command ls /proc 2>/dev/null | grep -E '^[0-9]+$')" "$cur"
            elif ((args == 0)); then
                _kechi_words "$(_kechi_apps)" "$cur"
            fi
            ;;
    esac
}
complete -F _kechictl kechictl

_kechid()
{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
        words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
    fi
    COMPREPLY=()
    if [[ $cur == -* ]]; then
        _kechi_words $'--foreground\n--user\n--help\n--version' "$cur"
        return
    fi
    local i
    for ((i = 1; i < cword; i++)); do
        [[ ${words[i]} == -* ]] || return # the app is given already
    done
    if [[ $cur == */* || $cur == .* ]]; then
        _kechi_toml_files "$cur"
    else
        _kechi_words "$(_kechi_apps)" "$cur"
        [[ -z $cur ]] || _kechi_toml_files "$cur"
    fi
}
complete -F _kechid kechid

# ex: filetype=sh
